"""`python -m lm convert HF_DIR OUT_DIR [--unrolled]`: import an HF checkpoint, save it for lm."""

import argparse
import sys

from lm.convert.hf import from_hf
from lm.convert.store import save_converted


def main(argv: list[str]) -> None:
    """argv[0] is the command name ('convert')."""
    parser = argparse.ArgumentParser(
        prog="python -m lm convert",
        description="Convert a Hugging Face GPT-2 / BERT / T5 directory (config.json + "
        "model.safetensors) into lm's config.json + params.safetensors.",
    )
    parser.add_argument("hf_dir", help="directory written by HF `save_pretrained`")
    parser.add_argument("out_dir", help="where to write config.json and params.safetensors")
    parser.add_argument("--unrolled", action="store_true",
                        help="store layers as layers_0..layers_{L-1} (default: scanned `layers`)")
    args = parser.parse_args(argv[1:])
    try:
        model, params = from_hf(args.hf_dir, scan_layers=not args.unrolled)
    except (FileNotFoundError, ValueError) as e:  # bad input: the message says it all
        sys.exit(f"python -m lm convert: {e}")
    save_converted(args.out_dir, model.cfg, params)
    print(f"wrote {args.out_dir}/config.json and params.safetensors ({model.cfg.family})")
