"""Per data objective: how a batch feeds the model and which losses and metrics come out.

An objective is data, not code paths: which batch keys feed the model, and its loss terms. Each
term names the model output it scores, the batch key with its labels, and its per-item
weights. The loss is the sum over terms of (Σ weight·loss) / (Σ weight over the WHOLE batch),
which is what makes gradient accumulation exact (step.py).
"""

import dataclasses
import operator
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.data import glue
from lm.errors import UserError
from lm.eval import metrics
from lm.train import losses

Batch = dict[str, jax.Array]
# batch -> (positional args, keyword args) of model.apply / model.init after the variables
ModelInputs = Callable[[Batch], tuple[tuple, dict]]


@dataclasses.dataclass(frozen=True)
class Term:
    name: str  # metric prefix: '' gives `loss`/`accuracy`, 'mlm' gives `mlm_loss`/`mlm_accuracy`
    logits: Callable[[Any], jax.Array]  # model outputs -> scores
    labels: Callable[[Batch], jax.Array]  # batch -> the labels of those scores
    weights: Callable[[Batch], jax.Array]  # batch -> per-item weights (0 = padding)
    loss: Callable[..., dict[str, losses.Sum]] = losses.cross_entropy


@dataclasses.dataclass(frozen=True)
class Objective:
    inputs: ModelInputs
    terms: tuple[Term, ...]
    perplexity: bool = False  # report exp(loss) (token-level LM objectives)
    # Whole-split metrics that are not means (F1, Matthews, Spearman): data config -> an
    # accumulator with add(logits, labels, weights) and compute() -> dict, or None. Eval then
    # also returns the first term's (logits, labels, weights) to the host.
    host_metrics: Callable[[Any], Any] | None = None
    # Eval also decodes the targets greedily and scores the text (lm.train.decoding).
    decodes: bool = False


def forward(objective: Objective, model: nn.Module, params: Any, batch: Batch, *,
            deterministic: bool, rngs: dict | None = None) -> Any:
    args, kwargs = objective.inputs(batch)
    return model.apply({"params": params}, *args, **kwargs, deterministic=deterministic, rngs=rngs)


def init_params(objective: Objective, model: nn.Module, rng: jax.Array, batch: Batch) -> Any:
    """Freshly initialised params (nn.Partitioned-boxed) for inputs shaped like `batch`."""
    args, kwargs = objective.inputs(batch)
    return model.init({"params": rng}, *args, **kwargs, deterministic=True)["params"]


# --- model inputs (the keyword names of each model's __call__) ---

def _gpt_inputs(batch):
    return (batch["inputs"],), dict(
        segment_ids=batch.get("segment_ids"), positions=batch.get("positions"),
        input_mask=batch.get("input_mask"))


def _bert_inputs(batch):
    return (batch["inputs"],), dict(
        token_type_ids=batch.get("token_type_ids"), input_mask=batch["input_mask"],
        mlm_positions=batch.get("mlm_positions"))


def _t5_inputs(batch):
    return (batch["inputs"], batch["decoder_inputs"]), dict(
        encoder_mask=batch["input_mask"], decoder_mask=_decoder_mask(batch))


# A classification batch feeds either classifier: GPT ignores token_type_ids.
_CLASSIFIER_INPUTS = {"bert": _bert_inputs, "gpt": _gpt_inputs}


def _decoder_mask(batch: Batch) -> jax.Array:
    # Decoder input t is target t-1 shifted right (t=0 is the start token), so it is real
    # exactly when target t is: every target of span corruption is scored.
    return (batch["weights"] > 0).astype(jnp.int32)


# --- labels and weights ---

def _token_weights(batch: Batch) -> jax.Array:
    return batch["weights"]


def _mlm_targets(batch: Batch) -> jax.Array:
    """The targets at `mlm_positions` (B, P) where the batch lists them (the model then
    scores only those), else every position's (B, T)."""
    if "mlm_positions" not in batch:
        return batch["targets"]
    return jnp.take_along_axis(batch["targets"], batch["mlm_positions"], axis=1)


def _mlm_weights(batch: Batch) -> jax.Array:
    return batch["mlm_weights"] if "mlm_positions" in batch else batch["weights"]


def _real_rows(batch: Batch) -> jax.Array:
    # [CLS] is always real, so an all-zero padding row (eval) has input_mask[:, 0] == 0.
    return batch["input_mask"][:, 0].astype(jnp.float32)


def _example_weights(batch: Batch) -> jax.Array:
    return batch["example_weights"]


def _squared_error_1d(preds_Bx1, labels_B, weights_B):
    return losses.squared_error(preds_Bx1[:, 0], labels_B, weights_B)


_LM = Term("", lambda out: out, operator.itemgetter("targets"), _token_weights)
_MLM = Term("mlm", lambda out: out["mlm_logits"], _mlm_targets, _mlm_weights)
_NSP = Term("nsp", lambda out: out["nsp_logits"], operator.itemgetter("nsp_labels"), _real_rows)
_CLASSES = Term("", lambda out: out["logits"], operator.itemgetter("labels"), _example_weights)
_REGRESSION = dataclasses.replace(_CLASSES, loss=_squared_error_1d)


class GlueMetrics:
    """The official metrics of GLUE task `data.task` (lm.metrics), exact over the whole split."""

    def __init__(self, task: str):
        self._acc = metrics.Accumulator(task)
        self.spec = self._acc.spec  # which metrics it reports (checked against best_metric)

    def add(self, logits_BxC, labels_B, weights_B) -> None:
        self._acc.add(metrics.predictions_from_logits(logits_BxC), labels_B, weights_B)

    def compute(self) -> dict[str, float]:
        return self._acc.compute()


def _glue_metrics(data_cfg: Any) -> GlueMetrics | None:
    return GlueMetrics(data_cfg.task) if data_cfg.get("task") in glue.TASKS else None


# Keyed by `config.data.objective`. Classification scores with MSE when the model has a
# single output (num_labels == 1: regression, e.g. STS-B).
OBJECTIVES: dict[str, Callable[[Any], Objective]] = {
    "causal": lambda model_cfg: Objective(_gpt_inputs, (_LM,), perplexity=True),
    "random_windows": lambda model_cfg: Objective(_gpt_inputs, (_LM,), perplexity=True),  # nanoGPT
    "mlm": lambda model_cfg: Objective(_bert_inputs, (_MLM,)),
    "mlm_nsp": lambda model_cfg: Objective(_bert_inputs, (_MLM, _NSP)),
    "span_corruption": lambda model_cfg: Objective(_t5_inputs, (_LM,), perplexity=True),
    "seq2seq": lambda model_cfg: Objective(_t5_inputs, (_LM,), perplexity=True, decodes=True),
    "classification": lambda model_cfg: Objective(
        _CLASSIFIER_INPUTS[model_cfg.family],
        (_REGRESSION if model_cfg.num_labels == 1 else _CLASSES,),
        host_metrics=_glue_metrics,
    ),
}


def get(objective: str, model_cfg: Any) -> Objective:
    """The objective named by `data.objective`, for a model of `model_cfg`."""
    if objective not in OBJECTIVES:
        raise UserError(
            f"no training objective data.objective={objective!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[objective](model_cfg)


def _prefixed(term: Term, metric: str) -> str:
    return f"{term.name}_{metric}" if term.name else metric


def loss_key(term: Term) -> str:
    return _prefixed(term, "loss")


def term_weights(objective: Objective, batch: Batch) -> dict[str, jax.Array]:
    """Σ weight of each term's loss over `batch` (the normaliser of that term)."""
    return {loss_key(t): jnp.sum(t.weights(batch).astype(jnp.float32)) for t in objective.terms}


def metric_sums(objective: Objective, outputs: Any, batch: Batch) -> dict[str, losses.Sum]:
    """`{metric: (sum, weight)}` of every term, e.g. mlm_loss, mlm_accuracy, nsp_loss, ..."""
    sums = {}
    for t in objective.terms:
        for metric, s in t.loss(t.logits(outputs), t.labels(batch), t.weights(batch)).items():
            sums[_prefixed(t, metric)] = s
    return sums


def total_loss(objective: Objective, sums: dict[str, losses.Sum],
               totals: dict[str, jax.Array]) -> jax.Array:
    """Σ over terms of loss-sum / whole-batch weight (`totals` from term_weights)."""
    return sum(sums[k][0] / jnp.maximum(totals[k], 1e-9) for k in map(loss_key, objective.terms))


def host_outputs(objective: Objective, outputs: Any, batch: Batch) -> tuple | None:
    """What eval hands to `objective.host_metrics`: the first term's (logits, labels, weights)."""
    if objective.host_metrics is None:
        return None
    t = objective.terms[0]
    return t.logits(outputs), t.labels(batch), t.weights(batch)


def summarize(objective: Objective, sums: dict[str, losses.Sum]) -> dict[str, jax.Array]:
    """Final metrics from accumulated sums: each mean, the total `loss`, and `perplexity`."""
    means = losses.finalize(sums)
    means["loss"] = sum(means[loss_key(t)] for t in objective.terms)
    if objective.perplexity:
        means["perplexity"] = jnp.exp(means["loss"])
    return means
