"""`python -m lm convert HF_DIR OUT_DIR [--unrolled]`: import a Hugging Face checkpoint.

Reads a GPT-2 / BERT / T5 directory (config.json + model.safetensors, as `save_pretrained`
writes it) and writes lm's config.json + params.safetensors to OUT_DIR, with the tokenizer
files and HF's config (as hf_config.json: label names) copied beside them, so `sample --hf
OUT_DIR`, `fill_mask --hf OUT_DIR` and `classify --hf OUT_DIR` read it.
"""

import os

from lm.cli import common


def main(argv: list[str]) -> None:
    """argv[0] is the command name ('convert')."""
    p = common.parser("convert", __doc__, config=None)
    p.add_argument("hf_dir", help="directory written by HF `save_pretrained`")
    p.add_argument("out_dir", help="where to write config.json and params.safetensors")
    p.add_argument("--unrolled", action="store_true",
                   help="store layers as layers_0..layers_{L-1} (default: scanned `layers`)")
    args, _ = common.parse(p, argv[1:])
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        p.error(f"out_dir {args.out_dir} is a file: give a directory (new or existing)")
    from lm.convert.hf import from_hf
    from lm.convert.store import save_converted
    from lm.errors import UserError

    try:
        model, params = from_hf(args.hf_dir, scan_layers=not args.unrolled)
    except (FileNotFoundError, ValueError) as e:  # bad input: the message says it all
        raise UserError(str(e)) from None
    copied = save_converted(args.out_dir, model.cfg, params, hf_dir=args.hf_dir)
    print(f"wrote {args.out_dir}/config.json and params.safetensors ({model.cfg.family}); "
          + (f"tokenizer: {', '.join(copied)}" if copied else
             f"{args.hf_dir} holds no tokenizer files: copy them in to sample or fill_mask"))
