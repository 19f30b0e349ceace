"""python -m lm study --config experiments/bert_nsp_study.py:cpu --workdir /tmp/nsp_study

BERT's pretraining-task ablation (Devlin et al. 2019, Table 5) as a study: three pretraining
variants on WikiText-2 with one shared sentencepiece vocabulary, each pretrained with several
seeds, then finetuned on five GLUE tasks with several seeds and scored on the full dev sets.

  mlm_nsp  BERT: masked LM + next-sentence prediction (the baseline; Table 5 "BERT-Base")
  mlm      masked LM only, rows from one document (Table 5 "No NSP"; RoBERTa's DOC-SENTENCES)
  ltr      a left-to-right GPT of the same shape, vocabulary, data and pretraining recipe,
           finetuned from its last real token (Table 5 "LTR & No NSP")

Args: `cpu` (this 2-core machine, ≤ 3 h) or `base` (BERT-base shapes, for an accelerator);
`ref=roberta` puts RoBERTa's Table 2 beside the result instead of BERT's Table 5.
`--print_commands` lists every run; `--parallel 2` runs two at a time, one per core.
"""

import pathlib

from lm.config import Reference, Study, Task, Tokenizer, Variant, flag_value, load, parse_arg, pick
from lm.data import glue

ARGS = ("cpu", "base", "cpu,ref=roberta")

BERT = "experiments/bert_mlm_nsp.py"
GPT = "experiments/gpt_wikitext.py"
GLUE = "experiments/finetune_glue.py"
HERE = pathlib.Path(__file__).resolve().parent  # to read BERT's recipe from any directory

# What the GPT takes from the BERT run it is compared with (BERT §5.1: "exactly the same
# pre-training data, fine-tuning scheme, and hyperparameters"): shape, vocabulary, tokens per
# step, steps and optimizer. Read from bert_mlm_nsp.py, so there is one copy of each.
MATCHED = ("model.num_layers", "model.d_model", "model.num_heads", "model.d_ff",
           "model.vocab_size", "model.dropout_rate", "model.attention_dropout_rate",
           "data.seq_len", "train.batch_size", "train.steps", "train.warmup_steps",
           "train.lr", "train.min_lr", "train.schedule", "train.b1", "train.b2", "train.eps",
           "train.weight_decay", "train.clip_norm")

# Dev-set trivial baselines (constant prediction), the floor every cell must clear; the
# report prints them under the variants. MRPC: all "equivalent" (279 of 408) has precision
# 279/408 and recall 1, so F1 = 2·279/(279 + 408). CoLA: a constant has MCC 0 (accuracy 69.1).
FLOORS = {"sst2": 444 / 872, "mrpc": 2 * 279 / (279 + 408), "rte": 146 / 277, "cola": 0.0,
          "stsb": 0.0}
# Fully pretrained BERT-Tiny/Mini (Turc et al. 2019, google-research/bert README, GLUE test)
# score CoLA 0.0, MRPC F1 81.1, RTE 57.2/57.9: at these shapes CoLA, MRPC and RTE sit at or
# near their floors even after 1M pretraining steps, so this study's cpu scale can separate
# variants on SST-2 and STS-B only (measurements below).
SIZES = {
    # 2 layers × 128, 2 heads, d_ff 512 = BERT-Tiny (Turc et al. 2019); vocab 8192 (shared).
    # Pretraining: 16 rows × 128 = 2,048 tokens/step × 1,000 steps = 2.0M tokens ≈ 0.8 epoch
    # of WikiText-2 (≈ 2.6M pieces). Finetuning: batch 32, the dev set scored every epoch and
    # the best epoch kept; lr 2e-4 (Turc et al.'s grid tops at 3e-4; BERT's 2e-5 barely moves
    # a model this small), STS-B's regression head 1e-3 (Spearman 0.08-0.12 -> 0.17-0.18).
    "cpu": dict(
        arg="tiny",  # the BERT and GPT experiments' arg (size), then reshaped by `shape`
        shape={"model.num_layers": 2, "model.d_model": 128, "model.num_heads": 2,
               "model.d_ff": 512},
        steps=1000,
        # task -> (train split, epochs, lr); steps/epoch = ⌈rows / 32⌉
        tasks={"sst2": ("train[:4000]", 3, 2e-4),  # 125 × 3 = 375 steps
               "mrpc": ("train", 2, 2e-4),  # 3,668 rows: 115 × 2 = 230 steps
               "rte": ("train", 2, 2e-4),  # 2,490 long pairs: 78 × 2 = 156 steps
               "cola": ("train[:4000]", 3, 2e-4),  # 375 steps
               "stsb": ("train", 3, 1e-3)},  # 5,749 rows: 180 × 3 = 540 steps
        pretrain_seeds=(0, 1, 2), finetune_seeds=(0, 1)),
    # BERT-base shapes and BERT's phase-1 recipe (bert_mlm_nsp.py:base, 256 × 128 tokens ×
    # 10k steps); full GLUE train sets with BERT's finetuning recipe (lr 2e-5, batch 32,
    # 3 epochs); 5 finetuning seeds as RoBERTa (which reports their median).
    "base": dict(arg="base", shape={}, steps=None,
                 tasks={t: ("train", 3, 2e-5) for t in ("sst2", "mrpc", "rte", "cola", "stsb")},
                 pretrain_seeds=(0, 1, 2), finetune_seeds=(0, 1, 2, 3, 4)),
}

# What `cpu` costs, measured: the whole study from a fresh clone, `--parallel 2` (two runs at
# a time, one core each), on the 2-core AMD EPYC development machine, 2026-12-03, every run
# trained at f9dff37 (later commits changed only the report, e.g. its floor row): 58 min 46 s
# wall, 1.2 GB peak memory. Tokenizer (8192-piece unigram on WikiText-2 train) < 10 s;
# pretraining 23.6 min: BERT mlm / mlm_nsp 191 s per run, GPT ltr 414 s (every token
# predicted over 8,192 pieces); finetuning 35 min for 90 runs, mean seconds per run
# (start-up and every dev eval included; BERT / GPT): sst2 36 / 37, mrpc 52 / 53,
# rte 40 / 43, cola 24 / 22, stsb 66 / 68. Without --parallel, single runs projected 2.0 h.
# Results: docs/nsp_study/results.md (README, "Studies"). NSP never learned at this scale
# (eval NSP accuracy 0.47-0.54 after 1,000 steps), and of the five tasks only SST-2
# (≈ 71 vs 50.9) and STS-B (≈ 15-17 vs 0) clear their floors; MRPC, RTE and CoLA sit at
# them (see FLOORS), as fully pretrained BERT-Tiny models do.

# Published dev-set numbers (×100), keyed by our task names where a column is one of our
# tasks; the other columns keep the paper's name. Checked against text extractions of both
# papers (arXiv 1810.04805 Table 5; arXiv 1907.11692 Table 2).
REFERENCES = {
    # Table 5's MRPC column is accuracy; our mrpc column is F1 (GLUE's main MRPC metric):
    # compare the direction and size of the differences, not the values.
    "bert": Reference(
        citation="Devlin et al. 2019, BERT, Table 5 (BERT-Base architecture, dev sets; MRPC "
                 "accuracy, SQuAD 1.1 F1)",
        baseline="BERT-Base",
        rows={"BERT-Base": dict(mnli_m=84.4, qnli=88.4, mrpc=86.7, sst2=92.7, squad=88.5),
              "No NSP": dict(mnli_m=83.9, qnli=84.9, mrpc=86.5, sst2=92.6, squad=87.9),
              "LTR & No NSP": dict(mnli_m=82.1, qnli=84.3, mrpc=77.5, sst2=92.1, squad=77.8),
              "+ BiLSTM": dict(mnli_m=82.1, qnli=84.1, mrpc=75.7, sst2=91.6, squad=84.9)},
        row_of={"mlm_nsp": "BERT-Base", "mlm": "No NSP", "ltr": "LTR & No NSP"}),
    # Our mlm rows come from one document each, as DOC-SENTENCES; RoBERTa has no LTR row.
    "roberta": Reference(
        citation="Liu et al. 2019, RoBERTa, Table 2 (base models pretrained on BookCorpus + "
                 "Wikipedia, dev sets; SQuAD F1)",
        baseline="SEGMENT-PAIR+NSP",
        rows={"SEGMENT-PAIR+NSP": dict(squad11=90.4, squad20=78.7, mnli_m=84.0, sst2=92.9,
                                       race=64.2),
              "SENTENCE-PAIR+NSP": dict(squad11=88.7, squad20=76.2, mnli_m=82.9, sst2=92.1,
                                        race=63.0),
              "FULL-SENTENCES": dict(squad11=90.4, squad20=79.1, mnli_m=84.7, sst2=92.5,
                                     race=64.8),
              "DOC-SENTENCES": dict(squad11=90.6, squad20=79.7, mnli_m=84.7, sst2=92.7,
                                    race=65.6),
              "BERT_BASE": dict(squad11=88.5, squad20=76.3, mnli_m=84.3, sst2=92.8, race=64.3)},
        row_of={"mlm_nsp": "SEGMENT-PAIR+NSP", "mlm": "DOC-SENTENCES"}),
}


def _matched(bert_spec: str, overrides: dict) -> dict:
    """The BERT variant's values of MATCHED (with the study's overrides), for the GPT."""
    path, _, arg = bert_spec.partition(":")
    config = load(f"{HERE / pathlib.Path(path).name}:{arg}",
                  {k: flag_value(v) for k, v in overrides.items()})
    return {f"{part}.{field}": config[part][field]
            for part, field in (key.split(".") for key in MATCHED)}


def get_study(arg: str | None = None) -> Study:
    a = parse_arg(arg, size="cpu", ref="bert")
    size = pick(SIZES, a.size)
    pre = dict(size["shape"], **({"train.steps": size["steps"]} if size["steps"] else {}))
    nsp, mlm = f"{BERT}:{size['arg']}", f"{BERT}:{size['arg']},nsp=False"
    variants = [Variant("mlm_nsp", nsp, pre), Variant("mlm", mlm, pre),
                Variant("ltr", f"{GPT}:{size['arg']}", _matched(nsp, pre))]
    tasks = [Task(name, f"{GLUE}:{name},lr={lr},epochs={epochs},train={split}",
                  f"eval/{glue.get(name).main}", "max", floor=FLOORS[name])
             for name, (split, epochs, lr) in size["tasks"].items()]
    return Study(variants, tasks, tokenizer=Tokenizer(vocab_size=8192), baseline="mlm_nsp",
                 pretrain_seeds=size["pretrain_seeds"], finetune_seeds=size["finetune_seeds"],
                 reference=pick(REFERENCES, a.ref, what="reference"))
