"""`python -m nanollm.generate`: generate text from the command line, streamed as it is produced.

    python -m nanollm.generate --model DIR "Once upon a time"
    python -m nanollm.generate --model DIR --prompt-ids 1,450,4996 --max-new-tokens 20 --json

Errors (a bad flag, a missing or corrupt model, a prompt longer than the context) print one line and exit non-zero.
"""
import argparse
import json
import sys

from .generation import GenerationStats, iter_generate


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m nanollm.generate", description=__doc__.split("\n")[0])
    p.add_argument("prompt", nargs="?", help="the prompt text")
    p.add_argument("--model", required=True, help="a model directory (config.json + *.safetensors) or hub name")
    p.add_argument("--prompt-ids", help="comma-separated token ids, for models without a tokenizer")
    p.add_argument("--backend", default="numpy", help="numpy (default), cupy or emulator")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, help="0 is greedy (default: the model's generation_config.json)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--json", action="store_true", help="print one JSON object (text, token_ids, stats) at the end")
    p.add_argument("--stats", action="store_true", help="print TTFT, TPOT, tokens/s and peak memory to stderr")
    args = p.parse_args(argv)
    if (args.prompt is None) == (args.prompt_ids is None):
        p.error("give either a prompt or --prompt-ids")
    if args.prompt_ids is not None:
        try:
            args.prompt_ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            p.error(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}")
    return args


def format_stats(s: GenerationStats) -> str:
    return (f"prompt {s.prompt_tokens} tokens, {s.new_tokens} new | TTFT {s.ttft_s * 1e3:.1f} ms | "
            f"TPOT {s.tpot_s * 1e3:.1f} ms | {s.tokens_per_s:.1f} tokens/s | "
            f"peak memory {s.peak_memory_bytes / 2**20:.0f} MiB (KV cache {s.kv_cache_bytes / 2**20:.1f} MiB)")


def run(args) -> int:
    from . import load

    model = load(args.model, backend=args.backend)
    prompt = args.prompt_ids if args.prompt_ids is not None else args.prompt
    stats = GenerationStats(prompt_tokens=0)
    tokens = iter_generate(model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                           args.seed, stats)
    streaming = not args.json
    decoder = model.tokenizer.stream_decoder() if model.tokenizer is not None else None
    ids = []
    for token in tokens:
        ids.append(token)
        if streaming:
            piece = decoder.push(token) if decoder is not None else f"{token} "
            sys.stdout.write(piece)
            sys.stdout.flush()
    text = model.tokenizer.decode(ids) if model.tokenizer is not None else None
    if streaming:
        sys.stdout.write((decoder.flush() if decoder is not None else "") + "\n")
    else:
        print(json.dumps({"text": text, "token_ids": ids, "stats": stats.as_dict()}))
    if args.stats:
        print(format_stats(stats), file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        # Every error the engine raises on purpose names the problem; a traceback would only bury that line.
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
