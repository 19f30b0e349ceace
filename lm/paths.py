"""Where the shared datasets live: `../shared` beside the checkout, or $LM_SHARED_DIR."""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("LM_SHARED_DIR", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"
SHARED_TFDS = SHARED / "tfds"
