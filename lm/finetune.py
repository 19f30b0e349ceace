"""Finetuning: start a classifier from a pretrained encoder; GLUE prediction files.

Initialisation (`config.init`, applied by the trainer to a fresh run, never on resume):
  - `init.checkpoint`: the workdir (or one checkpoint step directory) of a `bert_mlm_nsp`
    run of this project. The encoder, embeddings and pooler are restored exactly; the
    pretraining heads (MLM, NSP) are dropped; the classifier keeps its fresh initialisation.
  - `init.hf_dir`: a Hugging Face checkpoint directory, read with `lm.convert.from_hf`.
The pretrained model's architecture must equal `config.model`'s (fields such as dropout,
dtype or num_labels may differ); otherwise a clear error lists the differing fields.

    python -m lm predict --workdir DIR [--split validation|test] [--out FILE]

writes `index<TAB>prediction` rows with the label names the GLUE server expects.
"""

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util
from flax.core import meta

from lm import metrics
from lm.models.config import ModelConfig

# ModelConfig fields a finetuned model may set differently from its pretrained source:
# they change neither the encoder's parameter shapes nor its function at eval time.
FREE_FIELDS = frozenset({
    "num_labels", "heads", "dropout_rate", "attention_dropout_rate", "dtype",
    "attention_impl", "scan_layers", "remat_policy", "init_std",
})
# Parameter subtrees that a finetuned model initialises anew.
FRESH = frozenset({"classifier"})


# ---------------------------------------------------------------- initialisation


def check_compatible(pretrained: ModelConfig, finetuned: ModelConfig, source: str) -> None:
    """Raises if the two configs differ in any field that shapes the encoder."""
    differ = {f.name: (getattr(pretrained, f.name), getattr(finetuned, f.name))
              for f in dataclasses.fields(ModelConfig)
              if f.name not in FREE_FIELDS
              and getattr(pretrained, f.name) != getattr(finetuned, f.name)}
    if differ:
        lines = "\n".join(f"  model.{k}: checkpoint {a!r}, config {b!r}" for k, (a, b)
                          in differ.items())
        raise ValueError(f"the checkpoint {source} does not match config.model:\n{lines}\n"
                         "build config.model from the checkpoint (see experiments/"
                         "finetune_glue.py) or remove the overrides that change it")


def _layer_layout(params: dict, scan: bool) -> dict:
    """Each stack (`encoder`) in the scanned (`layers`) or unrolled (`layers_i`) layout.

    A checkpoint saved with the other `scan_layers` setting still initialises the model.
    """
    from lm.nn.transformer import stack_layers, unstack_layers

    def convert(sub: Any) -> Any:
        if not isinstance(sub, dict):
            return sub
        if scan and "layers_0" in sub:
            return stack_layers(sub, sum(k.startswith("layers_") for k in sub))
        if not scan and "layers" in sub:
            return unstack_layers(sub)
        return sub

    return {name: convert(sub) for name, sub in params.items()}


def merge_pretrained(fresh: Mapping, pretrained: Mapping, source: str) -> dict:
    """`fresh` with every leaf outside FRESH replaced by the pretrained one.

    Leaves only in `pretrained` (MLM/NSP heads) are dropped. A leaf of `fresh` that
    `pretrained` lacks, or has with another shape, is an error naming them all.
    Boxed (logically partitioned) leaves of `fresh` stay boxed.
    """
    fresh_flat = traverse_util.flatten_dict(fresh)
    pre_flat = traverse_util.flatten_dict(meta.unbox(pretrained))
    missing, wrong_shape, merged = [], [], {}
    for path, leaf in fresh_flat.items():
        if path[0] in FRESH:
            merged[path] = leaf
            continue
        value = meta.unbox(leaf)
        if path not in pre_flat:
            missing.append("/".join(path))
        elif np.shape(pre_flat[path]) != np.shape(value):
            wrong_shape.append(f"{'/'.join(path)}: {np.shape(pre_flat[path])} vs "
                               f"{np.shape(value)}")
        else:
            new = np.asarray(pre_flat[path], dtype=np.asarray(value).dtype)
            merged[path] = leaf.replace_boxed(new) if isinstance(leaf, meta.AxisMetadata) \
                else new
    if missing or wrong_shape:
        raise ValueError(f"cannot initialise from {source}:\n"
                         f"  missing in the checkpoint ({len(missing)}): {missing[:10]}\n"
                         f"  shape (checkpoint vs model) ({len(wrong_shape)}): "
                         f"{wrong_shape[:10]}")
    return traverse_util.unflatten_dict(merged)


def load_pretrained(init_cfg: Any, model_cfg: ModelConfig) -> tuple[dict, str]:
    """(params, description) of the source named by `init_cfg` (checkpoint or hf_dir)."""
    checkpoint, hf_dir = init_cfg.get("checkpoint") or "", init_cfg.get("hf_dir") or ""
    if bool(checkpoint) == bool(hf_dir):
        raise ValueError("config.init needs exactly one of init.checkpoint (a workdir of this "
                         f"project) and init.hf_dir; got checkpoint={checkpoint!r}, "
                         f"hf_dir={hf_dir!r}")
    if hf_dir:
        from lm.convert import from_hf

        model, params = from_hf(hf_dir, scan_layers=model_cfg.scan_layers)
        source = f"HF directory {hf_dir}"
        check_compatible(model.cfg, model_cfg, source)
        return params, source
    pre_cfg, params, step = restore_params(checkpoint)
    source = f"checkpoint {checkpoint} (step {step})"
    check_compatible(pre_cfg, model_cfg, source)
    return _layer_layout(params, model_cfg.scan_layers), source


def restore_params(workdir: str, step: int | None = None) -> tuple[ModelConfig, dict, int]:
    """(model config, params, step) of a run's checkpoint (default: its latest step).

    The optimizer state comes along (orbax restores the whole saved state) and is dropped.
    """
    import jax

    from lm.train.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir, every=1, keep=1)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"init.checkpoint={workdir!r} holds no checkpoint (expected "
                                f"{workdir}/checkpoints/<step>/ written by `python -m lm train`)")
    # The saved tree's own shapes are the restore target: nothing has to be rebuilt first.
    stored = ckpt._manager.item_metadata(step)["state"].tree
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored,
                            is_leaf=lambda m: hasattr(m, "shape"))
    state, _, extra = ckpt.restore(abstract, step)
    ckpt.close()
    model = extra["config"].get("model")
    if not model:
        raise ValueError(f"the checkpoint in {workdir} saved no config.model")
    return ModelConfig(**model), state["params"], step


def init_params(config: Any, fresh_params: Mapping) -> dict:
    """The trainer's hook: `fresh_params` initialised from `config.init` (if it names one)."""
    init_cfg = config.get("init") or {}
    if not (init_cfg.get("checkpoint") or init_cfg.get("hf_dir")):
        return dict(fresh_params)
    model_cfg = ModelConfig(**config.model)
    pretrained, source = load_pretrained(init_cfg, model_cfg)
    return merge_pretrained(fresh_params, pretrained, source)


# ---------------------------------------------------------------- GLUE submission files

# task -> (file name on the GLUE server, label names by id; None = regression score)
SUBMISSION: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "sst2": ("SST-2.tsv", ("0", "1")),
    "cola": ("CoLA.tsv", ("0", "1")),
    "mrpc": ("MRPC.tsv", ("0", "1")),
    "qqp": ("QQP.tsv", ("0", "1")),
    "wnli": ("WNLI.tsv", ("0", "1")),
    "rte": ("RTE.tsv", ("entailment", "not_entailment")),
    "qnli": ("QNLI.tsv", ("entailment", "not_entailment")),
    "mnli": ("MNLI-m.tsv", ("entailment", "neutral", "contradiction")),
    "stsb": ("STS-B.tsv", None),
}


def submission_lines(task: str, idx_N: Sequence[int], predictions_N: Sequence) -> list[str]:
    """`index\\tprediction` lines sorted by index, with GLUE's label names."""
    if task not in SUBMISSION:
        raise ValueError(f"no GLUE submission format for task {task!r}; known: "
                         f"{', '.join(SUBMISSION)}")
    names = SUBMISSION[task][1]
    # STS-B scores lie in [0, 5]; the server expects them there.
    fmt = (lambda p: f"{float(np.clip(p, 0.0, 5.0)):.3f}") if names is None else (
        lambda p: names[int(p)])
    order = np.argsort(np.asarray(idx_N), kind="stable")
    return ["index\tprediction"] + [f"{int(idx_N[i])}\t{fmt(predictions_N[i])}" for i in order]


# ---------------------------------------------------------------- predict


def best_step(workdir: pathlib.Path, metric: str, mode: str, steps: Sequence[int]) -> int:
    """The saved step with the best `metric` in metrics.jsonl (the latest if none scored)."""
    scores = {}
    path = workdir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        if row.get(metric) is not None and row["step"] in steps:
            scores[row["step"]] = row[metric]
    if not scores:
        return max(steps)
    return (max if mode == "max" else min)(scores, key=scores.get)


def predict_split(config: Any, params: Any, split: str, batch_size: int = 64
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(idx_N, predictions_N, labels_N) over every example of `split`, in input order."""
    import jax

    from lm import data, models

    model = models.build(ModelConfig(**config.model))
    tokenizer = data.make_tokenizer(config.data)
    batches = data.make_iterator(config.data, tokenizer, split=split, batch_size=batch_size,
                                 seed=0, shuffle=False, num_epochs=1)

    @jax.jit
    def logits_fn(params, batch):
        return model.apply({"params": params}, batch["inputs"],
                           token_type_ids=batch["token_type_ids"],
                           input_mask=batch["input_mask"])["logits"]

    idx, preds, labels = [], [], []
    for batch in batches:
        real_B = np.asarray(batch["example_weights"]) > 0  # eval padding rows weigh 0
        logits_BxC = np.asarray(logits_fn(params, {k: batch[k] for k in (
            "inputs", "token_type_ids", "input_mask")}))
        idx.append(np.asarray(batch["idx"])[real_B])
        preds.append(metrics.predictions_from_logits(logits_BxC)[real_B])
        labels.append(np.asarray(batch["labels"])[real_B])
    return np.concatenate(idx), np.concatenate(preds), np.concatenate(labels)


def predict(workdir: str, split: str = "validation", out: str | None = None,
            step: int | None = None) -> tuple[pathlib.Path, dict[str, float]]:
    """Writes the GLUE submission TSV of `split` from the run's best checkpoint.

    Returns the file and, for a labelled split, its metrics (over the whole split).
    """
    import ml_collections

    from lm.train.checkpoint import Checkpointer

    root = pathlib.Path(workdir)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root / 'config.json'} not found: --workdir must be a "
                                "finetuning run of `python -m lm train`")
    config = ml_collections.ConfigDict(json.loads((root / "config.json").read_text()))
    task = config.data.task
    if step is None:
        ckpt = Checkpointer(str(root), every=1, keep=1)
        step = best_step(root, config.train.best_metric, config.train.best_mode,
                         ckpt.all_steps() or [0])
        ckpt.close()
    _, params, step = restore_params(str(root), step)
    idx_N, preds_N, labels_N = predict_split(config, params, split)
    path = pathlib.Path(out) if out else root / f"{split}_{SUBMISSION[task][0]}"
    path.write_text("\n".join(submission_lines(task, idx_N, preds_N)) + "\n")
    # GLUE test labels are hidden (-1 in TFDS): score only a labelled split.
    scored = {} if np.any(labels_N < 0) else metrics.glue_metrics(task, preds_N, labels_N)
    return path, {"step": step, "examples": len(idx_N), **scored}


def main(argv: list[str]) -> None:
    """`python -m lm predict --workdir DIR [--split validation|test] [--out FILE]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lm predict", description=(
        "GLUE submission TSV (index<TAB>prediction) from a finetuning run's best checkpoint"))
    parser.add_argument("--workdir", required=True, help="the finetuning run")
    parser.add_argument("--split", default="validation", help="validation | test | ...")
    parser.add_argument("--out", default=None,
                        help="output file (default: DIR/<split>_<GLUE name>.tsv)")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step (default: the best by train.best_metric)")
    args = parser.parse_args(argv[1:])
    path, scores = predict(args.workdir, args.split, args.out, args.step)
    print(f"wrote {path}: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in scores.items()))
