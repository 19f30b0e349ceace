"""Generation: KV-cache decoding (generate.py) and text in / text out (inference.py)."""
