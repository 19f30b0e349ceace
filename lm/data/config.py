"""Every data setting with its default; experiment files start here and override fields."""

import ml_collections

# WikiText-2's raw files, one document per article (relative paths are looked up in the
# data home, $LM_DATA_DIR: `python -m lm data prepare wikitext-2` puts them there);
# experiment files add `**WIKITEXT2` to their data config.
WIKITEXT2 = dict(
    source="text", doc_separator="wikitext",
    files={"train": "wikitext-2/train.txt", "validation": "wikitext-2/valid.txt",
           "test": "wikitext-2/test.txt"},
    train_split="train", eval_split="validation",
)


def default_config() -> ml_collections.ConfigDict:
    """Data config: source, splits, tokenizer, objective and its options, workers."""
    return ml_collections.ConfigDict(dict(
        # --- source
        # 'tfds' | 'text' (local files) | classification: 'glue' (TFDS if prepared, else the
        # TSV files), 'tfds' or 'tsv' | seq2seq: also 'pairs' | 'synthetic' (random tokens in
        # the objective's shapes, for benchmarks: no corpus, no tokenizer)
        source="tfds",
        name="tiny_shakespeare",  # TFDS name (tiny_shakespeare also ships inside lm)
        data_dir="",  # TFDS data dir ('' = $TFDS_DATA_DIR, else ~/tensorflow_datasets); tsv:
        #               the task's directory ('' = $LM_DATA_DIR/glue/<TASK>)
        # text/tsv: split name -> glob, e.g. {'train': 'wikitext-2/train.txt'}; '' = none
        files=dict(train="", validation="", test=""),
        text_key="text",  # TFDS feature that holds the text
        # text files: 'file' (a document each) | 'blank_line' | 'line' | 'wikitext'
        # (articles) | any other string: a line equal to it ends a document.
        doc_separator="file",
        # e.g. 0.9: 'train' = the first 90% of the characters of the 'train' documents,
        # 'validation'/'test' = the rest (nanoGPT's shakespeare_char split).
        char_split=0.0,
        chunk_chars=0,  # >0: cut documents into pieces this long (finer shuffling)
        train_split="train",  # split names may be sliced or joined: 'train[:10%]+test'
        eval_split="validation",
        # --- tokenizer
        tokenizer=dict(
            kind="char",  # 'sentencepiece' | 'char' | 'hf' (HF tokenizer.json; alias 'wordpiece')
            path="",  # .model / tokenizer.json / char vocab .json ('' = char from the text)
            vocab_split="train",  # char: the split whose characters are the vocabulary
            vocab_multiple=128,  # pad vocab_size up to a multiple of this (1 = no padding)
        ),
        # --- objective
        # 'causal' | 'random_windows' | 'mlm' | 'mlm_nsp' | 'span_corruption' |
        # 'classification' | 'seq2seq'
        objective="causal",
        seq_len=128,
        causal=dict(
            add_eos=True,  # <eos> before every document (off: one plain character stream)
            segment_ids=True,  # emit segment_ids/positions: attention stays in a document
        ),
        mlm=dict(
            rate=0.15,  # fraction of non-special tokens chosen
            mask_prob=0.8,  # of the chosen: -> [MASK]
            random_prob=0.1,  # -> a random token (the rest keep their token)
            whole_word=False,  # choose whole words (all their word pieces) at once
            max_predictions=0,  # cap on chosen tokens per sequence (BERT: 20 at 128); 0 = none
        ),
        nsp=dict(
            random_next_prob=0.5,  # B is a segment of another document this often
            short_seq_prob=0.1,  # BERT: sometimes make shorter sequences
        ),
        span=dict(
            noise_density=0.15,
            mean_span_length=3.0,
        ),
        # classification: batches of similar lengths, each cut to a power-of-two bucket
        # (8, 16, 32, ... seq_len), so short sentences do not pay for seq_len.
        length_buckets=False,
        task="",  # GLUE task (lm.data.glue) for 'classification' and 'seq2seq'
        target_len=32,  # seq2seq: decoder length (targets + <eos>; longer ones are cut)
        pairs=dict(source_key="source", target_key="target"),  # seq2seq 'pairs' files
        # --- pipeline
        # Logical shards of every global batch (lm/data/shards.py): the data order depends
        # on this, not on the process count, so a run resumes exactly on another number of
        # hosts. 0 = the process count of the run that started. More processes than shards
        # repeat the data work; fewer run several shards each. (random_windows and
        # length-bucketed batches are global already and ignore it.)
        shards=0,
        shuffle_buffer=1024,  # window shuffle of packed rows / instances when shuffling
        num_threads=4,  # threads that read + tokenize documents
        prefetch=4,  # batches prepared ahead (a background thread)
        workers=0,  # >0: worker processes (training iterators only)
    ))
