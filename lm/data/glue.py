"""The GLUE tasks, each described once: data files and columns, labels, metrics, submission.

Data loading (`lm.data.classification`), training and evaluation metrics (`lm.metrics`),
prediction files (`lm.predict`), experiments and sweeps all read this table. Pure data: no
numpy, no jax, so experiment files can read it.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GlueTask:
    name: str  # 'sst2'
    texts: tuple[str, ...]  # TFDS features holding the text(s)
    tsv_dir: str  # GLUE's folder name, e.g. 'SST-2' (under $LM_DATA_DIR/glue)
    tsv_texts: tuple[str, ...]  # TSV columns (names, or numbers when there is no header)
    tsv_label: str
    labels: tuple[str, ...] | None  # label names by id, as the GLUE server wants them; None =
    metrics: tuple[str, ...]  #      regression (a score)
    main: str  # the metric that picks the best checkpoint (the BERT paper's choice)
    words: tuple[str, ...] | None = None  # T5's text-to-text targets by label id (TFDS's
    #                                       label names); None = the score as text (STS-B)
    header: bool = True
    tsv_label_names: bool = False  # the TSV holds label names (RTE, QNLI), not ids
    submission: str = ""  # the GLUE server's file name; '' = '<tsv_dir>.tsv'

    @property
    def num_labels(self) -> int:
        """Classifier outputs: the number of classes, 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def tfds_name(self) -> str:
        return f"glue/{self.name}"

    @property
    def submission_file(self) -> str:
        return self.submission or f"{self.tsv_dir}.tsv"


_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")
_ACC = ("accuracy",)

# Labels follow TFDS's glue encoding (rte/qnli: 0 = entailment, 1 = not_entailment).
TASKS: dict[str, GlueTask] = {t.name: t for t in (
    GlueTask("sst2", ("sentence",), "SST-2", ("sentence",), "label", _BINARY, _ACC, "accuracy",
             words=("negative", "positive")),
    # CoLA's TSV has no header: source, label, original label, sentence.
    GlueTask("cola", ("sentence",), "CoLA", ("3",), "1", _BINARY,
             ("matthews_corr", "accuracy"), "matthews_corr",
             words=("unacceptable", "acceptable"), header=False),
    GlueTask("mrpc", ("sentence1", "sentence2"), "MRPC", ("#1 String", "#2 String"), "Quality",
             _BINARY, ("f1", "accuracy"), "f1", words=("not_equivalent", "equivalent")),
    GlueTask("qqp", ("question1", "question2"), "QQP", ("question1", "question2"),
             "is_duplicate", _BINARY, ("f1", "accuracy"), "f1",
             words=("not_duplicate", "duplicate")),
    GlueTask("rte", ("sentence1", "sentence2"), "RTE", ("sentence1", "sentence2"), "label",
             _ENTAILMENT, _ACC, "accuracy", words=_ENTAILMENT, tsv_label_names=True),
    GlueTask("qnli", ("question", "sentence"), "QNLI", ("question", "sentence"), "label",
             _ENTAILMENT, _ACC, "accuracy", words=_ENTAILMENT, tsv_label_names=True),
    GlueTask("mnli", ("premise", "hypothesis"), "MNLI", ("sentence1", "sentence2"),
             "gold_label", ("entailment", "neutral", "contradiction"), _ACC, "accuracy",
             words=("entailment", "neutral", "contradiction"), tsv_label_names=True,
             submission="MNLI-m.tsv"),
    GlueTask("stsb", ("sentence1", "sentence2"), "STS-B", ("sentence1", "sentence2"), "score",
             None, ("pearson", "spearman"), "spearman"),
    GlueTask("wnli", ("sentence1", "sentence2"), "WNLI", ("sentence1", "sentence2"), "label",
             _BINARY, _ACC, "accuracy", words=("not_entailment", "entailment")),
)}


def get(name: str) -> GlueTask:
    """The task called `name`, or an error naming the known tasks."""
    if name not in TASKS:
        from lm.errors import UserError

        raise UserError(f"unknown GLUE task {name!r}: data.task must be one of {sorted(TASKS)}")
    return TASKS[name]
