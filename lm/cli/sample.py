"""`python -m lm sample`: continue prompts with a GPT (or decode a T5's input).

    python -m lm sample (--workdir DIR [--step best] | --hf DIR) --prompt "ROMEO:" \\
        [--prompts FILE] [--max_new_tokens 256] [--temperature T] [--top_k 0] \\
        [--top_p 1.0] [--num_samples 1] [--seed 0] [--config.<key>=<value> ...]

A run is read with its own tokenizer from its best checkpoint (`--step latest` or a number
for another); `--config.<key>=<value>` overrides its recorded config (model fields that leave
the parameters alone, e.g. `--config.model.dtype=bfloat16`). `--hf DIR` reads a Hugging Face
GPT-2, T5 or BERT directory (or one `lm convert` wrote); for T5 the prompt is the encoder's
input. Prompts come from the arguments or a file, one per line.

--temperature defaults to the model's natural choice, as transformers' `generate`: greedy (0)
for a T5 (encoder-decoder), sampling at 1.0 for a GPT.
"""

from lm.cli import common


def main(argv: list[str]) -> None:
    p = common.parser("sample", __doc__, config=None)
    common.add_run_source(p)
    p.add_argument("--prompt", action="append", default=[], help="repeatable")
    p.add_argument("--prompts", default=None, help="a file of prompts, one per line")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy; default: 0 for T5 (encoder-decoder), 1.0 for GPT")
    p.add_argument("--top_k", type=int, default=0, help="0 = off")
    p.add_argument("--top_p", type=float, default=1.0, help="1 = off")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args, overrides = common.parse(p, argv[1:])
    prompts = common.lines(args.prompt, args.prompts, "--prompts")
    from lm.generation.inference import check_sampling, sample_text

    check_sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, num_samples=args.num_samples)
    model, params, tokenizer, _ = common.load_model(args, overrides)
    texts = sample_text(model, params, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        num_samples=args.num_samples, seed=args.seed)
    for i, text in enumerate(texts):
        prompt = prompts[i // args.num_samples]
        print(f"--- prompt {i // args.num_samples + 1}, sample {i % args.num_samples + 1}: "
              f"{prompt!r}\n{text}")
