"""`python -m nanollm.generate`: generate text from the command line, streamed as it is produced.

    python -m nanollm.generate --model DIR "Once upon a time"
    python -m nanollm.generate --model DIR --prompt-ids 1,450,4996 --max-new-tokens 20 --json
    python -m nanollm.generate --model DIR --prompt "The sky is" --prompt "Paris is" --stats      (a batch)
    python -m nanollm.generate --model DIR --temperature 0.8 --top-p 0.9 --show-probs 5 "Paris is the city"
    python -m nanollm.generate --model DIR --chat --system "You are terse."                        (interactive)
    python -m nanollm.generate --trace "Once upon a time"                   (every op of prefill and two decode steps)
    python -m nanollm.generate --show-attention 2 --plot attention.png "Once upon a time"
    python -m nanollm.generate --prompt-lookup 4 --stats "..."        (speculative: the same tokens, fewer passes)
    python -m nanollm.generate --model DIR --assistant-model SMALL_DIR "..."     (a draft model proposes them)

Errors (a bad flag, a missing or corrupt model, a prompt longer than the context) print one line and exit non-zero.
"""
import argparse
import json
import re
import sys
import warnings

from .chat import chat_template_for, turn_end_ids
from .files import read_text
from .generation import generate
from .loader import default_backend, default_model_path, load
from .memory import keep_freed_memory
from .request import OPTIONS, GenerationStats, eos_ids
from .views import plot
from .views.attention import attention_maps, format_attention, parse_attention_spec
from .views.choice import format_choice
from .views.trace import format_trace, trace_generation


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        """One line and exit status 2, instead of argparse's usage block."""
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv):
    p = ArgumentParser(prog="python -m nanollm.generate", description=__doc__.split("\n")[0])
    p.add_argument("text", nargs="?", help="the prompt text")
    p.add_argument("--model", help="a model directory (config.json + *.safetensors), a llama2.c .bin, or a hub "
                                   "name (default: GPT-2 from the cache or the hub, else the small demo model shipped "
                                   "inside nanollm)")
    p.add_argument("--backend", help="cpu (the default where a C++ compiler builds its kernels, else numpy), "
                                     "numpy (the reference), cupy (a GPU) or emulator")
    src = p.add_argument_group("prompts (several make a batch)")
    src.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for a batch")
    src.add_argument("--prompts-file", help="a file with one prompt per line")
    src.add_argument("--prompt-ids", action="append", default=[], help="comma-separated token ids; repeatable")
    src.add_argument("--chat", action="store_true", help="interactive chat on stdin, with the model's chat template")
    src.add_argument("--system", help="--chat: the system message")
    src.add_argument("--chat-template", help="--chat: a built-in template (chatml, llama2, llama3, plain) instead "
                                             "of the model's own")
    gen = p.add_argument_group("generation (unset: the model's generation_config.json, else the engine's default)")
    for o in OPTIONS:  # every number the request takes, from its one table (request.OPTIONS)
        if o.kind in (int, float):
            gen.add_argument(flag(o.name), dest=o.name, type=o.kind, help=o.help,
                             metavar=flag(o.name)[2:].replace("-", "_").upper())  # TOP_P, PROMPT_LOOKUP
    gen.add_argument("--assistant-model", metavar="DIR",
                     help="speculative decoding: a smaller model with the same tokenizer (loaded as --model is, on "
                          "the same backend) proposes --num-assistant-tokens tokens, verified in one pass")
    gen.add_argument("--no-kv-cache", dest="kv_cache", action="store_false", default=None,
                     help="recompute the whole sequence at every step (same tokens; --stats shows what the cache "
                          "saves)")
    gen.add_argument("--logit-bias", action="append", default=[], metavar="ID=BIAS", help="repeatable")
    gen.add_argument("--early-stopping", choices=["true", "false", "never"], help="beam search: when to stop")
    gen.add_argument("--stop", action="append", default=[], help="a stop string (never printed); repeatable")
    gen.add_argument("--keep-recent", action="store_true",
                     help="a prompt too long for the context keeps its most recent tokens instead of failing")
    gen.add_argument("--padding-side", choices=["left", "right"], help="where a batch's shorter prompts are padded")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object (text, token_ids, stats) at the end")
    out.add_argument("--stats", action="store_true", help="print TTFT, TPOT, tokens/s and memory to stderr")
    out.add_argument("--show-probs", type=int, default=0, metavar="K",
                     help="print every stage of each token choice, K tokens a stage (raw logits, penalties, "
                          "temperature, the top-k/top-p/min-p cuts, the number drawn and the token it picked)")
    out.add_argument("--show-prompt", action="store_true",
                     help="--chat: print the exact text the template produced and its tokens, every turn")
    out.add_argument("--trace", type=int, nargs="?", const=2, metavar="STEPS",
                     help="print every op of the prefill and of STEPS decode steps (default 2): stage, shapes, time, "
                          "the KV cache, bytes read and FLOP per byte")
    out.add_argument("--show-attention", metavar="LAYER[:HEAD]",
                     help="print one layer's attention weights (one head, or the mean of all) as a heat map of "
                          "tokens x tokens")
    out.add_argument("--plot", metavar="FILE.png",
                     help="draw --show-attention's map, or --stats' time per token over the context, as a PNG "
                          "(needs matplotlib: pip install 'nanollm[viz]')")
    args = p.parse_args(argv)

    try:
        args.prompt_ids = [[int(t) for t in s.split(",") if t.strip()] for s in args.prompt_ids]
    except ValueError:
        p.error(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}")
    try:
        args.logit_bias = {int(k): float(v) for k, v in (item.split("=") for item in args.logit_bias)}
    except ValueError:
        p.error(f"--logit-bias takes ID=BIAS, e.g. 50256=-100, got {args.logit_bias!r}")
    if args.seed is not None and args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if args.show_probs < 0:
        p.error(f"--show-probs K must be >= 0 (0 shows nothing), got {args.show_probs}")
    if args.trace is not None and args.trace < 0:
        p.error(f"--trace STEPS must be >= 0, got {args.trace}")
    if args.show_attention is not None:
        try:
            args.show_attention = parse_attention_spec(args.show_attention)
        except ValueError as e:
            p.error(str(e))
    views = [name for name, on in (("--trace", args.trace is not None), ("--show-attention", args.show_attention),
                                   ("--show-probs", args.show_probs), ("--json", args.json)) if on]
    if len(views) > 1:
        p.error(f"{' and '.join(views)} each print their own view: give one of them")
    if views[:1] in (["--trace"], ["--show-attention"]) and args.chat:
        p.error(f"{views[0]} follows one prompt, not --chat")
    if args.plot is not None and not (bool(args.show_attention) ^ args.stats):
        p.error("--plot draws one picture: --show-attention's map or --stats' time per token; give one of them")
    if args.early_stopping is not None:
        args.early_stopping = {"true": True, "false": False, "never": "never"}[args.early_stopping]
    if args.chat == bool(args.text is not None or args.prompt or args.prompt_ids or args.prompts_file):
        p.error("give a prompt (text, --prompt, --prompts-file or --prompt-ids) or --chat, not both")
    return args


def read_prompts(args) -> list:
    """Every prompt the flags name, in order: text, --prompt, --prompt-ids, then --prompts-file's non-empty lines.
    Called inside main's error handling, so a file that is missing, not UTF-8 or a FIFO is one line, not a traceback.
    """
    prompts = ([args.text] if args.text is not None else []) + args.prompt + args.prompt_ids
    if args.prompts_file is not None:
        try:
            text = read_text(args.prompts_file)
        except OSError as e:
            raise ValueError(f"--prompts-file: {e}") from None
        prompts += [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
        if not prompts:
            raise ValueError(f"--prompts-file {args.prompts_file} holds no prompt (every line is empty)")
    return prompts


def flag(option: str) -> str:
    """generate()'s option name -> the command line's flag: max_new_tokens -> --max-new-tokens, or the one its
    Option names (prompt_lookup_num_tokens -> --prompt-lookup)."""
    named = [o.flag for o in OPTIONS if o.name == option and o.flag]
    return named[0] if named else "--" + option.replace("_", "-")


def in_flags(message: str) -> str:
    """An engine message names generate()'s options ("max_new_tokens=300 leaves no room", "top_p must be in ...");
    the command line's user knows the flags: "--max-new-tokens 300 leaves no room", "--top-p must be in ..."."""
    message = message.replace("context_overflow='truncate_left'", "--keep-recent")
    message = message.replace("kv_cache=False", "--no-kv-cache").replace("assistant_model", "--assistant-model")
    for o in OPTIONS:
        message = re.sub(rf"\b{o.name}=", flag(o.name) + " ", message)
        message = re.sub(rf"\b{o.name} (must|is|names)\b", flag(o.name) + r" \1", message)
    return message


def generation_options(args) -> dict:
    """The CLI flags as generate() keyword arguments (unset flags left out, so the model's defaults apply)."""
    options = {o.name: getattr(args, o.name) for o in OPTIONS if o.kind in (int, float)}
    options.update(logit_bias=args.logit_bias, stop=tuple(args.stop), padding_side=args.padding_side,
                   context_overflow="truncate_left" if args.keep_recent else None, early_stopping=args.early_stopping,
                   kv_cache=args.kv_cache, assistant_model=args.assistant_model)
    return {k: v for k, v in options.items() if v is not None}


def format_stats(s: GenerationStats) -> str:
    speculative = f" | {s.proposer}: proposed {s.proposed_tokens}, accepted {s.accepted_tokens} (acceptance rate " \
                  f"{s.acceptance_rate:.2f})" if s.proposer else ""
    return (f"prompt {s.prompt_tokens} tokens, {s.new_tokens} new | TTFT {s.ttft_s * 1e3:.1f} ms | "
            f"TPOT mean {s.tpot_s * 1e3:.1f} p50 {s.tpot_p50_s * 1e3:.1f} p90 {s.tpot_p90_s * 1e3:.1f} ms | "
            f"decode {s.tokens_per_s:.1f} tokens/s | prefill {s.prefill_tokens_per_s:.0f} tokens/s | "
            f"peak memory {s.peak_memory_bytes / 2**20:.0f} MiB (KV cache {s.kv_cache_bytes / 2**20:.2f} MiB)"
            + speculative)


def token_namer(model):
    """token id -> how a learner reads it: the repr of its text piece ('\\n' visible), or the id itself."""
    if model.tokenizer is None:
        return str
    return lambda i: repr(model.tokenizer.decode([i]))


def choice_printer(model, k: int, batch: bool):
    """on_choice callback for --show-probs: each choice's stages on stdout, before the text (which is then printed
    whole at the end, so the two never interleave)."""
    name = token_namer(model)

    def show(row, choice):
        print(("" if not batch else f"[{row}] ") + format_choice(choice, k, name), flush=True)

    return show


def result_json(r) -> dict:
    out = {"text": r.text, "token_ids": r.token_ids, "finish_reason": r.finish_reason, "stats": r.stats.as_dict()}
    if r.beams is not None:
        out["beams"] = [{"text": b.text, "token_ids": b.token_ids, "score": b.score} for b in r.beams]
    return out


def run_view(model, args, prompt) -> int:
    """--trace or --show-attention: one prompt generated with its ops recorded, then printed (and drawn, --plot)."""
    options = generation_options(args)
    if args.trace is not None:
        trace = trace_generation(model, prompt, decode_steps=args.trace, **options)
        print(format_trace(trace))
        result = trace.result
    else:
        layer, head = args.show_attention
        attention = attention_maps(model, prompt, layer, head, **options)
        result = attention.result
        print(format_attention(attention))
        if args.plot is not None:
            plot.plot_attention(attention, args.plot)
            print(f"wrote {args.plot}", file=sys.stderr)
    print("text:")
    print(result.text if result.text is not None else " ".join(map(str, result.token_ids)))
    if args.stats:
        print(format_stats(result.stats), file=sys.stderr)
    return 0


def run_prompts(model, args, prompts: list) -> int:
    if args.trace is not None or args.show_attention:
        if len(prompts) > 1:
            raise ValueError(f"{'--trace' if args.trace is not None else '--show-attention'} follows one prompt; "
                             f"got a batch of {len(prompts)}")
        return run_view(model, args, prompts[0])
    options = generation_options(args)
    single = len(prompts) == 1
    if args.show_probs > 0:
        options["on_choice"] = choice_printer(model, args.show_probs, batch=not single)
    streaming = (single and not args.json and model.tokenizer is not None and (args.num_beams or 1) == 1
                 and args.show_probs == 0)
    if streaming:
        stream = generate(model, prompts[0], stream=True, **options)
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        results = stream.results
    else:
        results = generate(model, prompts if not single else prompts[0], return_beams=args.json, **options)
        results = [results] if single else results
        if args.json:
            print(json.dumps(result_json(results[0]) if single else {"results": [result_json(r) for r in results]}))
        else:
            if args.show_probs > 0:
                print("text:")
            for i, r in enumerate(results):
                shown = r.text if r.text is not None else " ".join(map(str, r.token_ids))
                print(shown if single else f"[{i}] {shown}")
    if args.stats:
        for i, r in enumerate(results):
            print(("" if single else f"[{i}] ") + format_stats(r.stats), file=sys.stderr)
        if not single:  # each sequence's own numbers above; what the batch achieved together here
            print(f"batch of {len(results)}: {sum(r.stats.new_tokens for r in results)} new tokens, "
                  f"{results[0].stats.batch_tokens_per_s:.1f} tokens/s together (prefill included)", file=sys.stderr)
        if args.plot is not None:
            how = "recomputing every position (--no-kv-cache)" if args.kv_cache is False else "with the KV cache"
            plot.plot_step_times([r.stats for r in results], args.plot,
                                 labels=[how if single else f"[{i}] {how}" for i in range(len(results))])
            print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def run_chat(model, args) -> int:
    """The interactive loop: each turn resends the whole conversation, rendered with the chat template."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError("--chat needs a model with tokenizer files")
    template = chat_template_for(tok, args.chat_template)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    options = generation_options(args)
    options["eos_token_ids"] = eos_ids(model) | turn_end_ids(tok)  # the turn's end token stops the reply
    options["stop"] = tuple(options.get("stop", ())) + template.stop
    if sys.stdin is None:  # started with standard input closed (`<&-`)
        raise ValueError("--chat reads the conversation from standard input, which is closed")
    print(f"chat ({template.name} template); an empty line or end of input quits", file=sys.stderr)
    turn, interactive = 0, sys.stdin.isatty()
    while True:
        if interactive:  # piped input needs no prompt marker mixed into the report lines
            print("> ", end="", file=sys.stderr, flush=True)
        raw = sys.stdin.buffer.readline()  # bytes, decoded here: the locale may not be UTF-8, or may hide errors
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"standard input is not UTF-8 text (byte {raw[e.start]:#04x} in line {turn + 1})"
                             ) from None
        if not line or not line.strip():
            return 0
        turn += 1
        messages.append({"role": "user", "content": line.rstrip("\n")})
        ids = template.encode(tok, messages)  # message text never becomes special tokens
        if args.show_prompt:  # the model keeps nothing between turns: this whole text goes in every time
            print(f"[turn {turn}: the template's text, {len(ids)} tokens]\n{template.render(messages)}\n"
                  f"[its tokens] {' '.join(map(str, ids))}", file=sys.stderr)
        stream = generate(model, ids, stream=True, **options)
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        r = stream.result
        messages.append({"role": "assistant", "content": r.text})
        print(f"[turn {turn}: prompt {r.stats.prompt_tokens} tokens (the whole conversation), "
              f"{r.stats.new_tokens} new, {r.finish_reason}]", file=sys.stderr)
        if args.stats:
            print(format_stats(r.stats), file=sys.stderr)


def file_settings_note(model, args) -> str:
    """One line naming what the model's generation_config.json decides that no flag overrides (the demo model sets
    repetition_penalty 1.3: greedy text looks unlike greedy text without it), or "" when it decides nothing."""
    chosen = {o.name for o in OPTIONS if getattr(args, o.name, None) is not None}
    keys = ["do_sample"] + [o.name for o in OPTIONS if o.from_file != "no" and o.name not in chosen]
    values = model.generation_defaults
    found = [f"{key}={json.dumps(values[key])}" for key in keys if values.get(key) is not None]
    return f"note: generation_config.json sets {' '.join(found)} (a flag overrides each)" if found else ""


def load_assistant(source: str, backend: str):
    """--assistant-model DIR, loaded as --model is; a failure names the flag, since two models are in play."""
    try:
        return load(source, backend=backend)
    except (OSError, ValueError, RuntimeError) as e:  # a missing folder, a corrupt file, the hub unreachable
        raise ValueError(f"--assistant-model {source}: {e}") from None


def run(args) -> int:
    if args.model is None:
        args.model = default_model_path()
    prompts = [] if args.chat else read_prompts(args)  # before loading: a bad file fails fast
    if args.plot is not None:  # before the work whose picture it would draw
        plot.check_can_write(args.plot)
    with warnings.catch_warnings(record=True) as caught:  # e.g. an EOS id outside the vocabulary, ignored
        warnings.simplefilter("always")
        args.backend = args.backend or default_backend()
        model = load(args.model, backend=args.backend)
        if args.assistant_model is not None:
            args.assistant_model = load_assistant(args.assistant_model, args.backend)
    for warning in caught:  # one line each, as the errors are, not Python's two with a source line
        print(f"warning: {warning.message}", file=sys.stderr)
    note = file_settings_note(model, args)
    if note:
        print(note, file=sys.stderr)
    return run_chat(model, args) if args.chat else run_prompts(model, args, prompts)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()  # the program owns the process's allocator: freed arrays stay warm for the next pass
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head -1`): nothing left to say, and no one to say it to
        sys.stderr.close()
        return 1
    except (OSError, ValueError, ImportError, RuntimeError, MemoryError) as e:
        # Every error the engine raises on purpose names the problem; a traceback would only bury that line.
        # (NumPy's own MemoryError names the size: "Unable to allocate 1.2 TiB for an array with shape ...".)
        print(f"error: {in_flags(str(e))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
