"""Import a Hugging Face checkpoint directory (config.json + safetensors) as an lm model.

Each family module (gpt2, bert, t5) supplies two pure functions:
  `config(hf: dict) -> dict`   HF config.json -> ModelConfig fields (it refuses what lm
                               cannot reproduce exactly),
  `rules(cfg) -> {path: Rule}` every lm parameter path -> (HF tensor name, layout change).
This module reads the files, checks that the tensors on disk are exactly the ones the rules
ask for (listing any missing or unexpected), applies the rules and stacks layers for scan.
Torch is never imported: the safetensors numpy API reads the weights (its flax API bfloat16).
"""

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from lm.convert import bert, gpt2, t5
from lm.convert.common import Path
from lm.errors import MissingFileError, UserError
from lm.models import ModelConfig, build
from lm.nn.transformer import stack_layers

# model_type -> family module: `config`, `rules`, and the tensor names PREFIX (base-model
# prefix of head classes), IGNORED (regex of buffers) and TIED (copy -> source).
FAMILIES = {"gpt2": gpt2, "bert": bert, "t5": t5}

# architectures[0] -> (model_type, extra ModelConfig fields derived from the HF config).
ARCHITECTURES: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "GPT2LMHeadModel": ("gpt2", lambda hf: {}),
    "GPT2ForSequenceClassification": ("gpt2", lambda hf: {"num_labels": bert.num_labels(hf)}),
    "BertModel": ("bert", lambda hf: {"heads": ()}),
    "BertForPreTraining": ("bert", lambda hf: {"heads": ("mlm", "nsp")}),
    "BertForMaskedLM": ("bert", lambda hf: {"heads": ("mlm",)}),
    "BertForSequenceClassification": (
        "bert",
        lambda hf: {"heads": (), "num_labels": bert.num_labels(hf)},
    ),
    "T5ForConditionalGeneration": ("t5", lambda hf: {}),
}
# Parameter subtrees of the lm model that an architecture's checkpoint lacks. They are
# initialised afresh, as transformers does when it loads such a checkpoint into a class that
# has them (BertForMaskedLM has no pooler; a classifier finetuned from it starts a new one).
FRESH: dict[str, tuple[str, ...]] = {"BertForMaskedLM": ("pooler",)}
# How many token arrays each lm family's `init` takes (T5: encoder and decoder tokens).
INIT_INPUTS = {"gpt": 1, "bert": 1, "t5": 2}
# Used when config.json has no `architectures` list.
DEFAULT_ARCHITECTURE = {
    "gpt2": "GPT2LMHeadModel",
    "bert": "BertModel",
    "t5": "T5ForConditionalGeneration",
}


def from_hf(directory: str | pathlib.Path, **model_overrides: Any) -> tuple[nn.Module, dict]:
    """Returns `(model, params)` reproducing the HF model saved in `directory`.

    `model_overrides` set ModelConfig fields the checkpoint does not fix (dtype,
    attention_impl, scan_layers, remat_policy, dropout rates...).
    """
    directory = pathlib.Path(directory)
    hf_config, files = read_config(directory), weight_files(directory)
    cfg = config_from_hf(hf_config, **model_overrides)
    params = convert_tensors(cfg, FAMILIES[hf_config["model_type"]], read_tensors(files),
                             fresh=FRESH.get(architecture(hf_config), ()))
    return build(cfg), params


def read_config(directory: pathlib.Path) -> dict:
    """The parsed config.json of an HF checkpoint directory, with clear errors."""
    if not directory.is_dir():
        raise MissingFileError(f"HF checkpoint directory {str(directory)!r} does not exist")
    path = directory / "config.json"
    if not path.is_file():
        raise MissingFileError(
            f"{str(path)!r} is missing: an HF checkpoint directory holds config.json and "
            "model.safetensors (what `save_pretrained` writes)"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # not JSON (or not UTF-8)
        raise UserError(f"{path} is not JSON ({e}): re-save the model with "
                        "`save_pretrained(dir)`") from None


def _inside(directory: pathlib.Path, index: pathlib.Path, shard: str) -> pathlib.Path:
    """`directory / shard`, refused unless it resolves (links followed) to a file inside it."""
    if not isinstance(shard, str) or not (directory / shard).resolve().is_relative_to(
            directory.resolve()):
        raise UserError(f"{index} names the shard {shard!r}, outside {directory}: only files "
                        "inside the checkpoint directory are read")
    return directory / shard


def weight_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """model.safetensors, or the shards its index names: files inside `directory` only (an
    index naming `../x` or an absolute path is refused, not followed)."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        shards = json.loads(index.read_text())["weight_map"].values()
        files = sorted({_inside(directory, index, shard) for shard in shards})
    else:
        present = sorted(p.name for p in directory.iterdir())
        raise MissingFileError(
            f"no model.safetensors (or model.safetensors.index.json) in {str(directory)!r}; "
            f"found {present}. Re-save the model with `save_pretrained(dir)` (safetensors is "
            "the default); PyTorch .bin files are not read"
        )
    return files


def read_tensors(files: list[pathlib.Path]) -> dict[str, np.ndarray]:
    """All tensors of the safetensors `files` as numpy arrays (bfloat16 via ml_dtypes)."""
    import safetensors.flax  # noqa: PLC0415  (only needed here)
    import safetensors.numpy  # noqa: PLC0415

    tensors = {}
    for f in files:
        try:
            tensors.update(safetensors.numpy.load_file(f))
        except TypeError:  # numpy has no bfloat16; the flax loader reads it through jax
            tensors.update({k: np.asarray(v) for k, v in safetensors.flax.load_file(f).items()})
        except safetensors.SafetensorError as e:  # truncated or not safetensors at all
            raise UserError(f"{f} is damaged or not a safetensors file ({e}): download or "
                            "save it again") from None
    return tensors


def architecture(hf: dict) -> str:
    """The supported HF class the config.json declares (its first `architectures` entry)."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise UserError(f"config.json model_type={model_type!r} is not supported; "
                         f"supported: {sorted(FAMILIES)}")
    name = (hf.get("architectures") or [DEFAULT_ARCHITECTURE[model_type]])[0]
    if name not in ARCHITECTURES or ARCHITECTURES[name][0] != model_type:
        supported = [a for a, (t, _) in ARCHITECTURES.items() if t == model_type]
        raise UserError(f"config.json architectures=[{name!r}] is not supported for "
                         f"model_type={model_type!r}; supported: {supported}")
    return name


def config_from_hf(hf: dict, **overrides: Any) -> ModelConfig:
    """Translates an HF config.json dict into a ModelConfig (plus `overrides`)."""
    model_type, name = hf.get("model_type"), architecture(hf)
    unknown = overrides.keys() - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"unknown ModelConfig fields in overrides: {sorted(unknown)}")
    try:
        fields = FAMILIES[model_type].config(hf) | ARCHITECTURES[name][1](hf)
    except KeyError as e:
        raise UserError(f"config.json has no field {e.args[0]!r}, which a {model_type} "
                         "config needs") from None
    return ModelConfig(**(fields | overrides))


def convert_tensors(cfg: ModelConfig, family: Any, tensors: Mapping[str, np.ndarray],
                    fresh: tuple[str, ...] = ()) -> dict:
    """Applies the family's rules to HF `tensors`; the lm params tree (float32). The
    top-level subtrees named in `fresh` are initialised instead (see FRESH)."""
    tensors = fill_tied(canonical_names(tensors, family.PREFIX), family.TIED)
    rules = {path: rule for path, rule in family.rules(cfg).items() if path[0] not in fresh}
    check_names(tensors, {name for name, _ in rules.values()}, family)
    flat = {path: np.asarray(fn(np.asarray(tensors[name], np.float32))) for path, (name, fn)
            in rules.items()}
    params = unflatten(flat)
    if cfg.scan_layers:
        params = {name: scanned(sub) for name, sub in params.items()}
    params |= fresh_params(cfg, fresh)
    check_shapes(cfg, params)
    return jax.tree.map(jax.numpy.asarray, params)


def scanned(subtree: Any) -> Any:
    """A stack's `layers_i` stacked into `layers` (the scan layout); other subtrees unchanged."""
    if not (isinstance(subtree, dict) and "layers_0" in subtree):
        return subtree
    return stack_layers(subtree, sum(k.startswith("layers_") for k in subtree))


def fresh_params(cfg: ModelConfig, names: tuple[str, ...]) -> dict:
    """The top-level subtrees `names` of `build(cfg).init`'s params (seed 0); jit computes
    only those."""
    if not names:
        return {}
    tokens = [jax.numpy.zeros((1, 1), jax.numpy.int32)] * INIT_INPUTS[cfg.family]

    def init(key):
        params = nn.unbox(build(cfg).init(key, *tokens))["params"]
        return {name: params[name] for name in names}

    return jax.jit(init)(jax.random.key(0))


def param_shapes(cfg: ModelConfig) -> dict:
    """The params tree `build(cfg).init` creates, as ShapeDtypeStructs (nothing allocated)."""
    tokens = [jax.ShapeDtypeStruct((1, 1), jax.numpy.int32)] * INIT_INPUTS[cfg.family]
    return nn.unbox(jax.eval_shape(build(cfg).init, jax.random.key(0), *tokens))["params"]


def check_shapes(cfg: ModelConfig, params: dict) -> None:
    """The converted tree must be exactly what `build(cfg).init` creates (paths and shapes)."""
    want = {path: x.shape for path, x in flatten(param_shapes(cfg)).items()}
    got = {path: x.shape for path, x in flatten(params).items()}
    if want != got:
        diff = sorted((p, got.get(p), want.get(p)) for p in want.keys() | got.keys()
                      if got.get(p) != want.get(p))
        raise AssertionError(f"converted params differ from the lm model's "
                             f"(path, converted shape, model shape): {diff}")


# Old TF-converted checkpoints (bert-base-uncased) call LayerNorm params gamma / beta; HF
# renames them when loading.
LEGACY_SUFFIXES = {".gamma": ".weight", ".beta": ".bias"}


def canonical_names(tensors: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Drops the base-model prefix (`bert.`) that head classes add, so every class shares
    rules, and renames legacy LayerNorm gamma / beta."""
    def canonical(name: str) -> str:
        name = name.removeprefix(prefix)
        for old, new in LEGACY_SUFFIXES.items():
            if name.endswith(old):
                return name.removesuffix(old) + new
        return name

    return {canonical(k): v for k, v in tensors.items()}


def fill_tied(tensors: Mapping[str, np.ndarray], tied: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Adds absent tied copies from their source: HF saves a tied tensor once.

    (transformers 5 saves T5 v1.1 with a tied but unscaled LM head: lm's untied T5 with
    lm_head = the shared embedding.)
    """
    return {copy: tensors[source] for copy, source in tied.items() if source in tensors} | tensors


def check_names(tensors: Mapping[str, np.ndarray], needed: set[str], family: Any) -> None:
    """Raises, listing them, if tensors are missing or present but unused.

    Unused tensors are fine when they match `family.IGNORED` (buffers) or are tied copies
    (`family.TIED`: copy -> source) equal to their source.
    """
    unused = tensors.keys() - needed
    copies = {k for k in unused if family.TIED.get(k) in tensors}
    differing = sorted(k for k in copies if not np.array_equal(tensors[k], tensors[family.TIED[k]]))
    if differing:
        pairs = [f"{k} != {family.TIED[k]}" for k in differing]
        raise UserError(f"these tensors are one tied tensor in lm but differ in the checkpoint: "
                         f"{pairs}. An untied GPT-2/T5 LM head needs tie_word_embeddings=false in "
                         "config.json; BERT's MLM decoder is always the token embedding")
    missing = sorted(needed - tensors.keys())
    extra = sorted(k for k in unused - copies if not re.fullmatch(family.IGNORED, k))
    if missing or extra:
        prefix = f" (names shown without the prefix {family.PREFIX!r})" if family.PREFIX else ""
        raise UserError(
            f"the checkpoint's tensors do not match the architecture in config.json{prefix}:\n"
            f"  missing ({len(missing)}): {missing}\n  unexpected ({len(extra)}): {extra}"
        )


def flatten(tree: Mapping) -> dict[Path, Any]:
    """{'a': {'b': x}} -> {('a', 'b'): x}."""
    return {tuple(k.key for k in path): leaf for path, leaf in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[Path, Any]) -> dict:
    """{('a', 'b'): x} -> {'a': {'b': x}}."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree
