"""Put a dataset's raw files in the data home (`python -m lm data prepare NAME [--from DIR]`).

NAME: tiny_shakespeare, wikitext-2, glue (every task) or glue/<task> (sst2, cola, mrpc, ...).
With `--from DIR` the files are copied from a local copy laid out like the data home
(`tinyshakespeare/input.txt`, `wikitext-2/train.txt`, `glue/SST-2/dev.tsv`, ...); without
it they are downloaded from their public URLs. Either way each file's sha256 is compared
with the published copy's, and the command says what it did. The data home is
$LM_DATA_DIR (default ~/.cache/lm), where experiments look up relative data paths.

tiny Shakespeare also ships inside lm, so the quick start needs no preparation; GLUE read
with data.source='glue' uses TFDS's copy when it is prepared and these TSV files otherwise.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import io
import os
import pathlib
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable

from lm.data import glue, home
from lm.errors import MissingFileError, UserError


@dataclasses.dataclass(frozen=True)
class File:
    path: str  # under the data home
    url: str  # where it is published (a zip when `member` is set)
    sha256: str = ""  # of the published copy ('' = not pinned)
    member: str = ""  # the file's name inside the zip at `url`


_CHAR_RNN = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare"
_WIKITEXT = ("https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/"
             "wikitext-2")
_GLUE = "https://dl.fbaipublicfiles.com/glue/data"
_GLUE_ZIPS = {"sst2": "SST-2", "cola": "CoLA", "qqp": "QQP-clean", "stsb": "STS-B",
              "mnli": "MNLI", "qnli": "QNLIv2", "rte": "RTE", "wnli": "WNLI"}
# sha256 of the files as GLUE's download script writes them (see the project's data notes).
_GLUE_SHA = {
    "SST-2/train.tsv": "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
    "SST-2/dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    "CoLA/train.tsv": "cb368ebeb9f27d7ad03720d27ddc95687a311bdb100781a2fe59a5f5b1bc0624",
    "CoLA/dev.tsv": "8c013e21dc39957cac37378d87bebe225b694a0d5fe13eded66c2856628833fd",
    "MRPC/train.tsv": "69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3",
    "MRPC/dev.tsv": "9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17",
    "RTE/train.tsv": "41e3a9b063433392343fad9e962cf2f58b681c78d8f71592f4186f0837246c5c",
    "RTE/dev.tsv": "80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb",
    "QNLI/dev.tsv": "ac19409dcb04631eaaa094bdebdcf621086bc352503dfb6a1a648b614986f4fd",
    "STS-B/train.tsv": "41c4d978b6162abdcada7e49a982211954cca5459c228db478af333124b257a2",
    "STS-B/dev.tsv": "fe7dc0632a5033562f3cadff991f6e8d9b9b6311861660e78c3c82eb7db67f59",
    "WNLI/train.tsv": "9a88e9d54b6861cc796a088e9acf4f5f65064a9ef65ae6fa7a688b28391e5c9a",
    "WNLI/dev.tsv": "cba00490596dd14be8cf53b4f53bb744abe3a7b89f81ab210528d80225338ed5",
}
# MRPC is published by SentEval, not as a GLUE zip: GLUE's script splits its train file by
# these dev ids (what `_mrpc_files` does).
_MRPC_TRAIN = "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt"
_MRPC_DEV_IDS = ("https://firebasestorage.googleapis.com/v0/b/mtl-sentence-representations."
                 "appspot.com/o/data%2Fmrpc_dev_ids.tsv?alt=media&token=ec5c0836-31d5-48f4-b431-"
                 "7480817f1adc")


def _glue_files(task: glue.GlueTask) -> list[File]:
    names = ("train.tsv", "dev.tsv") if task.name != "mnli" else (
        "train.tsv", "dev_matched.tsv", "dev_mismatched.tsv")
    url = "" if task.name == "mrpc" else f"{_GLUE}/{_GLUE_ZIPS[task.name]}.zip"
    return [File(f"glue/{task.tsv_dir}/{n}", url, _GLUE_SHA.get(f"{task.tsv_dir}/{n}", ""),
                 member=f"{task.tsv_dir}/{n}") for n in names]


DATASETS: dict[str, list[File]] = {
    "tiny_shakespeare": [File("tinyshakespeare/input.txt", f"{_CHAR_RNN}/input.txt",
                              "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")],
    "wikitext-2": [
        File("wikitext-2/train.txt", f"{_WIKITEXT}/train.txt",
             "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
        File("wikitext-2/valid.txt", f"{_WIKITEXT}/valid.txt",
             "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
        File("wikitext-2/test.txt", f"{_WIKITEXT}/test.txt",
             "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
    ],
    **{f"glue/{name}": _glue_files(task) for name, task in glue.TASKS.items()},
}


def files_of(name: str) -> list[File]:
    """The files of dataset `name`."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; lm data prepare knows "
                        f"{', '.join(['glue', *DATASETS])}")
    return DATASETS[name]


def dataset_of(pattern: str) -> str | None:
    """The dataset whose files a data-home path (or glob) names: 'wikitext-2/train.txt' ->
    'wikitext-2'; None if `lm data prepare` puts no such file."""
    pattern = pattern.removeprefix("./")
    return next((name for name, files in DATASETS.items()
                 if any(fnmatch.fnmatchcase(f.path, pattern) for f in files)), None)


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except OSError as e:
        raise UserError(f"could not download {url} ({e}): without internet access, copy the "
                        "files from a machine that has it and use --from DIR") from None


def _mrpc_files(fetch: Callable[[str], bytes]) -> dict[str, bytes]:
    """GLUE's MRPC train.tsv / dev.tsv, split from SentEval's train file by the dev ids."""
    lines = fetch(_MRPC_TRAIN).decode("utf-8").splitlines(keepends=True)
    dev_ids = {tuple(line.strip().split("\t")) for line in
               fetch(_MRPC_DEV_IDS).decode("utf-8").splitlines() if line.strip()}
    train, dev = [lines[0]], [lines[0]]
    for line in lines[1:]:
        label, id1, id2, s1, s2 = line.rstrip("\r\n").split("\t")
        (dev if (id1, id2) in dev_ids else train).append(f"{label}\t{id1}\t{id2}\t{s1}\t{s2}\n")
    return {"glue/MRPC/train.tsv": "".join(train).encode("utf-8"),
            "glue/MRPC/dev.tsv": "".join(dev).encode("utf-8")}


def _fetch_all(files: list[File], fetch: Callable[[str], bytes]) -> dict[str, bytes]:
    """{path: bytes} of every file, reading each zip once."""
    out, zips = {}, {}
    for f in files:
        if f.path.startswith("glue/MRPC/"):
            out.update(_mrpc_files(fetch) if f.path not in out else {})
        elif f.member:
            if f.url not in zips:
                zips[f.url] = zipfile.ZipFile(io.BytesIO(fetch(f.url)))
            out[f.path] = zips[f.url].read(f.member)
        else:
            out[f.path] = fetch(f.url)
    return out


def prepare(name: str, source: str | None = None, *, fetch: Callable[[str], bytes] = _download,
            log=print) -> list[pathlib.Path]:
    """Puts the files of `name` into the data home, from `source` (a local copy) or their URLs.

    Returns the files written. A checksum that differs from the published copy's is reported
    (a different release), not fatal. 'glue' prepares every task; from a local copy, the
    tasks it lacks are skipped with a note.
    """
    if source and not pathlib.Path(source).is_dir():
        raise MissingFileError(f"--from {source}: no such directory (it should hold the files "
                               "laid out as in the data home, e.g. glue/SST-2/dev.tsv)")
    if name == "glue":
        written = []
        for task in glue.TASKS:
            try:
                written += prepare(f"glue/{task}", source, fetch=fetch, log=log)
            except MissingFileError as e:
                if not source:
                    raise
                log(f"glue/{task}: skipped ({e})")
        if not written:
            raise MissingFileError(f"--from {source} holds no GLUE task's files (expected "
                                   "e.g. glue/SST-2/train.tsv and glue/SST-2/dev.tsv under it)")
        return written
    files, target = files_of(name), home.data_home()
    if source:
        missing = [f.path for f in files if not (pathlib.Path(source) / f.path).is_file()]
        if missing:
            raise MissingFileError(f"{source} lacks {missing}: --from DIR must hold the files "
                                   "laid out as in the data home (e.g. glue/SST-2/dev.tsv)")
    contents = {} if source else _fetch_all(files, fetch)
    written = []
    for f in files:
        dest = target / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
            if source:
                with open(pathlib.Path(source) / f.path, "rb") as src:
                    shutil.copyfileobj(src, tmp)
            else:
                tmp.write(contents[f.path])
        os.replace(tmp.name, dest)  # atomic: a partial download never looks complete
        digest = sha256(dest)
        check = ("sha256 not pinned" if not f.sha256 else "sha256 ok" if digest == f.sha256
                 else f"sha256 {digest[:12]}… differs from the published {f.sha256[:12]}…")
        how = f"copied from {pathlib.Path(source) / f.path}" if source else \
            f"downloaded from {f.url}"
        log(f"{dest}: {how} ({check})")
        written.append(dest)
    return written
