"""Where data lives on a user's machine, by the conventions of the tools that read it.

- Raw files (text, TSV): `$LM_DATA_DIR`, default `~/.cache/lm`. A relative path or glob in a
  data config that matches nothing from the working directory is looked up there.
  `python -m lm data prepare NAME` fills it.
- Prepared TFDS datasets: `data.data_dir`, else `$TFDS_DATA_DIR`, else TFDS's own default
  `~/tensorflow_datasets`.
"""

from __future__ import annotations

import glob
import os
import pathlib

DATA_ENV = "LM_DATA_DIR"
TFDS_ENV = "TFDS_DATA_DIR"


def data_home() -> pathlib.Path:
    """The directory of raw data files: $LM_DATA_DIR, default ~/.cache/lm."""
    return pathlib.Path(os.path.expanduser(os.environ.get(DATA_ENV) or "~/.cache/lm"))


def resolve(pattern: str) -> str:
    """`pattern` itself if absolute or matching from the working directory, else under the
    data home (where `lm data prepare` puts files)."""
    pattern = os.path.expanduser(pattern)
    if os.path.isabs(pattern) or glob.glob(pattern):
        return pattern
    return str(data_home() / pattern)


def tfds_data_dir(data_dir: str | None = None) -> str:
    """data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS's default)."""
    return os.path.expanduser(data_dir or os.environ.get(TFDS_ENV) or "~/tensorflow_datasets")


def tfds_prepared(name: str, data_dir: str | None = None) -> bool:
    """Whether the TFDS dataset `name` (e.g. 'glue/sst2') is prepared in the TFDS data dir."""
    base = pathlib.Path(tfds_data_dir(data_dir), *name.split(":")[0].split("/"))
    return any(base.glob("**/dataset_info.json"))
