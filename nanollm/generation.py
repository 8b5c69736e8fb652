"""The generation loop: prefill the prompts once, then decode one token per sequence per step against the KV cache.

    prompt ids --prefill--> cache filled, logits of each prompt's last position --process, choose--> tokens
    tokens --decode step (T=1)--> cache grows by one, next logits --process, choose--> tokens ... until each stops

The prefix is never recomputed: a decode step costs one position per sequence plus attention over the cache.

Several prompts run as one batch. Shorter prompts are padded to the longest (left padding by default, as for
transformers' decoder-only models; right padding is supported too). Padding is invisible to the model: its cache
slots are hidden by a key mask, and every sequence gets its own positions, so a padded sequence computes what it
would alone. Each sequence stops on its own; a finished one keeps riding along (its tokens are ignored) until the
last one stops, which keeps the cache rectangular.

Which token comes next is logits_processors.py; when to stop and what text is shown is stopping.py; beam search is
beam_search.py. `generate` is the public entry point (`model.generate` calls it).
"""
import math
import resource
import time
from dataclasses import dataclass, field, replace
from numbers import Integral, Real

import numpy as np

from .logits_processors import SamplingParams, TokenHistory, choose_tokens, process_logits, top_probabilities
from .sampling import whole_number
from .stopping import TextStream

CONTEXT_OVERFLOW = ("error", "truncate_left")
# transformers' top_k when sampling is on and nothing names one (GenerationConfig._get_default_generation_params)
TRANSFORMERS_DEFAULT_TOP_K = 50


@dataclass
class GenerationStats:
    prompt_tokens: int
    new_tokens: int = 0
    ttft_s: float = 0.0  # time to first token: prompt in -> first new token chosen (prefill + one choice)
    tpot_s: float = 0.0  # mean time per output token after the first (the decode steps)
    tpot_p50_s: float = 0.0  # median time per output token
    tpot_p90_s: float = 0.0  # 90th percentile: the slow steps a user notices as stutter
    tokens_per_s: float = 0.0  # decode throughput, 1 / tpot_s
    prefill_tokens_per_s: float = 0.0  # prompt tokens (all sequences of the batch) / ttft_s
    kv_cache_bytes: int = 0  # the whole batch's cache
    peak_memory_bytes: int = 0  # peak resident set size of the process so far
    batch_size: int = 1

    def as_dict(self) -> dict:
        return dict(vars(self))


def record_timing(stats: GenerationStats, start: float | None, token_times: list[float], prefill_tokens: int
                  ) -> GenerationStats:
    """Fill in stats' timing and memory fields; returns stats. The greedy/sampling loop and beam search share it.

    start: perf_counter() as prefill began; token_times: perf_counter() when each new token was chosen (n,);
    prefill_tokens: the prompt tokens the prefill processed (every sequence of a batch).
    """
    stats.peak_memory_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    if token_times:
        stats.ttft_s = token_times[0] - start
        stats.prefill_tokens_per_s = prefill_tokens / stats.ttft_s
    if len(token_times) > 1:
        gaps = np.diff(token_times)  # (n-1,) seconds between consecutive new tokens
        stats.tpot_s = float(gaps.mean())
        stats.tpot_p50_s, stats.tpot_p90_s = (float(x) for x in np.percentile(gaps, [50, 90]))
        stats.tokens_per_s = 1.0 / stats.tpot_s if stats.tpot_s > 0 else 0.0
    return stats


@dataclass
class GenerationResult:
    text: str | None  # the new text (None when the model has no tokenizer); never contains a stop string or EOS
    token_ids: list[int]  # new tokens only, as generated (an EOS or the tokens spelling a stop string included)
    stats: GenerationStats
    finish_reason: str = "length"  # "length" (max_new_tokens), "eos" or "stop" (a stop string)
    prompt_ids: list[int] = field(default_factory=list)  # after any truncation (context_overflow="truncate_left")
    beams: list | None = None  # beam search with return_beams: every Beam, best first


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides what is generated, resolved once per request (see `resolve_settings`)."""

    sampling: SamplingParams
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # EOS is suppressed until this many new tokens exist
    eos_ids: frozenset = frozenset()  # {50256}
    stop: tuple = ()  # stop strings, e.g. ("\nUser:",)
    seed: int | None = None
    context_overflow: str = "error"  # or "truncate_left": keep the most recent tokens of the prompt
    padding_side: str = "left"  # batches: where the padding of shorter prompts goes
    num_beams: int = 1  # > 1: beam search (beam_search.py)
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # True, False or "never", as transformers

    def __post_init__(self):
        # Checked first, then stored as ints (2.0 -> 2), so NumPy never sees a float count. Frozen: object.__setattr__.
        for name, minimum in (("max_new_tokens", 0), ("min_new_tokens", 0), ("num_beams", 1)):
            object.__setattr__(self, name, whole_number(name, getattr(self, name), minimum))
        if self.seed is not None:
            object.__setattr__(self, "seed", whole_number("seed", self.seed))
        if self.context_overflow not in CONTEXT_OVERFLOW:
            raise ValueError(f"context_overflow must be one of {CONTEXT_OVERFLOW}, got {self.context_overflow!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):  # 1 == True: not enough
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        lp = self.length_penalty
        if isinstance(lp, bool) or not isinstance(lp, Real) or not math.isfinite(lp):
            raise ValueError(f"length_penalty must be a finite number (the exponent of a beam's length), got "
                             f"{self.length_penalty!r}")
        if not all(isinstance(s, str) for s in self.stop):
            raise ValueError(f"stop strings must be strings, got {self.stop!r}")
        if "" in self.stop:  # it would match before any text: say so rather than stop at once or never
            raise ValueError(f"a stop string must not be empty, got {self.stop!r}")


def resolve_settings(model, *, max_new_tokens=64, temperature=None, top_k=None, top_p=None, min_p=None,
                     repetition_penalty=None, presence_penalty=0.0, frequency_penalty=0.0, logit_bias=None,
                     min_new_tokens=None, eos_token_ids=None, stop=(), seed=None, context_overflow="error",
                     padding_side="left", num_beams=None, length_penalty=None, early_stopping=None
                     ) -> GenerationSettings:
    """Keyword arguments -> GenerationSettings. Unset ones follow the model's generation_config.json as transformers
    does: greedy unless it says do_sample, and its temperature/top_k/top_p/min_p only when sampling."""
    g = model.generation_defaults
    sampling = g.get("do_sample", False)

    def default(value, key, fallback, only_when_sampling=False):
        if value is not None:
            return value
        if only_when_sampling and not sampling:
            return fallback
        found = g.get(key)
        return fallback if found is None else found

    params = SamplingParams(
        temperature=float(default(temperature, "temperature", 1.0 if sampling else 0.0, True)),
        top_k=default(top_k, "top_k", TRANSFORMERS_DEFAULT_TOP_K if sampling else 0, True),
        top_p=float(default(top_p, "top_p", 1.0, True)),
        min_p=float(default(min_p, "min_p", 0.0, True)),
        repetition_penalty=float(default(repetition_penalty, "repetition_penalty", 1.0)),
        presence_penalty=float(presence_penalty), frequency_penalty=float(frequency_penalty),
        logit_bias=dict(logit_bias or {}),
    )
    checked_token_ids(list(params.logit_bias), model.config.vocab_size, "logit_bias")
    if isinstance(stop, str):
        stop = (stop,)
    if eos_token_ids is None:
        eos = eos_ids(model)
    else:
        eos = checked_token_ids(eos_token_ids, model.config.vocab_size, "the eos_token_ids argument")
    return GenerationSettings(
        sampling=params, max_new_tokens=max_new_tokens, min_new_tokens=default(min_new_tokens, "min_new_tokens", 0),
        eos_ids=frozenset(eos), stop=tuple(stop), seed=seed, context_overflow=context_overflow,
        padding_side=padding_side, num_beams=default(num_beams, "num_beams", 1),
        length_penalty=float(default(length_penalty, "length_penalty", 1.0)),
        early_stopping=default(early_stopping, "early_stopping", False),
    )


def eos_ids(model) -> set[int]:
    """End-of-sequence ids: generation_config.json when it names them, else config.json (as transformers does).
    Either file may hold one id, a list, or null (no EOS). Ids a file names outside the vocabulary were dropped
    with a warning at load (as transformers ignores them); these are checked again for models built in code."""
    if "eos_token_id" in model.generation_defaults:
        eos, source = model.generation_defaults["eos_token_id"], "eos_token_id in generation_config.json"
    else:
        eos, source = model.config.eos_token_ids, "eos_token_id in config.json"
    eos = [] if eos is None else eos
    return checked_token_ids(eos, model.config.vocab_size, source)


def checked_token_ids(ids, vocab_size: int, source: str) -> set[int]:
    """One token id or several -> the set of them, each a whole number in [0, vocab_size); else a ValueError that
    names the id and where it came from. Checked once here, so a processor that indexes the logits with these ids
    cannot fail mid-run (IndexError) or, worse, silently index from the end (id -24 is token V-24 to NumPy)."""
    ids = [ids] if isinstance(ids, Integral) else list(ids)
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, Integral) or not 0 <= token < vocab_size:
            raise ValueError(f"{source} names token {token!r}, outside the vocabulary of {vocab_size} tokens "
                             f"(ids 0 .. {vocab_size - 1})")
    return {int(token) for token in ids}


PROMPT_TYPES = "a prompt is a str or a list of int token ids, and a batch a list of prompts"


def is_prompt(prompt) -> bool:
    """One prompt: a string, or a list, tuple or 1-D array of int token ids (bool is not an id)."""
    if isinstance(prompt, str):
        return True
    return isinstance(prompt, (list, tuple, np.ndarray)) and \
        all(isinstance(t, Integral) and not isinstance(t, bool) for t in prompt)


def split_prompts(prompt) -> tuple[list, bool]:
    """prompt -> (the prompts, whether they are a batch); anything else is a TypeError that shows what was given.

    Examples: "Hi" -> (["Hi"], False); [1, 2] -> ([[1, 2]], False); ["Hi", [1, 2]] -> (["Hi", [1, 2]], True);
    [1.0, 2.0] -> TypeError (... got list[float]), since 1.0 is neither a token id nor a prompt.
    """
    if is_prompt(prompt):
        return [prompt], False
    if isinstance(prompt, (list, tuple)) and all(is_prompt(p) for p in prompt):
        return list(prompt), True  # not empty: an empty list is one (empty) prompt, caught by encode_prompt
    raise TypeError(f"{PROMPT_TYPES}; got {type_outline(prompt)}")


def type_outline(value, depth: int = 2) -> str:
    """What a value holds, two levels deep, for error messages.

    Examples: [1.0, 2.0] -> "list[float]"; [[1], "a"] -> "list[list[int] | str]"; 3 -> "int".
    """
    name = type(value).__name__
    if depth == 0 or not isinstance(value, (list, tuple)) or not value:
        return name
    return f"{name}[{' | '.join(sorted({type_outline(v, depth - 1) for v in value}))}]"


def encode_prompt(model, prompt, settings: GenerationSettings) -> list[int]:
    """One prompt (see `is_prompt`; a string needs the model's tokenizer) -> validated ids that fit the context.

    A prompt that leaves no room for max_new_tokens is an error, or with context_overflow="truncate_left" loses its
    oldest tokens: the model then sees the most recent window of max_seq_len - max_new_tokens tokens. max_new_tokens
    >= max_seq_len leaves no window at all, which is an error either way.
    """
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer files: pass the prompt as token ids")
        ids = model.tokenizer.encode_prompt(prompt)
    else:
        ids = [int(t) for t in prompt]
    if not ids:
        raise ValueError("the prompt is empty")
    new, context = settings.max_new_tokens, model.config.max_seq_len
    if len(ids) + new > context:
        if new >= context:
            raise ValueError(f"max_new_tokens={new} leaves no room for a prompt in the model's context of {context} "
                             f"tokens (at most {context - 1} new tokens)")
        if settings.context_overflow == "error":
            raise ValueError(f"prompt of {len(ids)} tokens + {new} new tokens = {len(ids) + new} exceeds the model's "
                             f"context of {context} tokens (context_overflow='truncate_left' keeps the most recent "
                             f"{context - new})")
        ids = ids[len(ids) - (context - new) :]
    return model.check_ids(ids)[0].tolist()


@dataclass
class Sequence:
    """One prompt's state in a batch."""

    prompt_ids: list[int]
    text: TextStream | None  # None when the model has no tokenizer
    token_ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)  # the text shown so far, piece by piece
    finish_reason: str | None = None  # set when the sequence stops


class Batch:
    """Prefill and decode a batch of prompts; `steps()` yields, after each step, what each sequence produced.

    Layout of the cache for a batch of prompts of lengths L_b, padded to T = max L_b:
      left padding:  slots 0 .. T-L_b-1 are padding, the prompt ends at slot T-1, new tokens from slot T on;
      right padding: the prompt fills slots 0 .. L_b-1, slots L_b .. T-1 are padding, new tokens from slot T on.
    Either way the padding slots are False in `slot_is_real` (the key mask), and sequence b's n-th new token sits
    at position L_b + n whatever its slot, so padding changes nothing a sequence computes.
    """

    def __init__(self, model, prompts: list[list[int]], settings: GenerationSettings, show_probs: int = 0,
                 on_probs=None):
        self.model, self.settings = model, settings
        self.show_probs, self.on_probs = show_probs, on_probs
        tok = model.tokenizer
        self.seqs = [Sequence(ids, TextStream(tok.stream_decoder(), settings.stop) if tok is not None else None)
                     for ids in prompts]
        if settings.padding_side == "right" and "sliding" in model.config.layer_types and \
                len({len(p) for p in prompts}) > 1:
            # A window counts cache slots; right padding puts a shorter prompt's new tokens more slots than
            # positions away from it, so the window would hide keys the model should see.
            raise ValueError("a model with sliding-window layers needs padding_side='left' for a batch of prompts of "
                             "different lengths")
        if settings.stop and tok is None:
            raise ValueError("stop strings need the model's tokenizer (this model has none)")
        self.stats = GenerationStats(prompt_tokens=sum(len(p) for p in prompts), batch_size=len(prompts))
        self.t_start: float | None = None  # perf_counter() as prefill begins
        self.token_times: list[float] = []  # perf_counter() when each step's tokens were chosen

    def prefill_inputs(self):
        """Padded ids (B, T), positions (B, T), the key mask over the whole cache (B, T + max_new) or None, the
        index of each prompt's last position (B,), and each prompt's length (B,): its first new token's position."""
        lengths = np.array([len(s.prompt_ids) for s in self.seqs])  # (B,)
        B, T = len(self.seqs), int(lengths.max())
        ids = np.zeros((B, T), dtype=np.int64)  # the pad id is irrelevant: padded slots are masked out
        slot_is_real = np.ones((B, T + self.settings.max_new_tokens), dtype=bool)
        positions = np.broadcast_to(np.arange(T), (B, T)).copy()
        left = self.settings.padding_side == "left"
        for b, s in enumerate(self.seqs):
            pad = T - lengths[b]
            if left:
                ids[b, pad:] = s.prompt_ids
                slot_is_real[b, :pad] = False
                positions[b] = np.maximum(np.arange(T) - pad, 0)
            else:
                ids[b, : lengths[b]] = s.prompt_ids
                slot_is_real[b, lengths[b] : T] = False
        last = np.full(B, T - 1) if left else lengths - 1
        padded = bool((lengths != T).any())
        return ids, positions, (slot_is_real if padded else None), last, lengths

    def steps(self):
        """Yield, after each step, a list of (sequence index, token, text piece) for every sequence still running."""
        model, s = self.model, self.settings
        if s.max_new_tokens == 0:
            return
        B, T = len(self.seqs), max(len(q.prompt_ids) for q in self.seqs)
        cache = model.new_cache(batch_size=B, max_len=T + s.max_new_tokens)  # first: it checks that memory suffices
        self.stats.kv_cache_bytes = cache.nbytes
        ids, positions, key_mask, last, next_pos = self.prefill_inputs()  # (B, T) ids
        rng = np.random.default_rng(s.seed)
        history = TokenHistory([q.prompt_ids for q in self.seqs], model.config.vocab_size) \
            if s.sampling.uses_history else None
        running = list(range(B))

        self.t_start = time.perf_counter()
        if key_mask is None:  # no padding: every row's last position is T-1
            logits = model.step(ids, cache)[:, -1]  # (B, V)
        else:
            mask = key_mask[:, :T]
            # Right padding puts each row's last prompt token at a different position, so every position is
            # projected to the vocabulary (B, T, V) and each row's own picked out; left padding needs only the last.
            all_logits = model.step(ids, cache, positions, mask, last_only=s.padding_side == "left")  # (B, T|1, V)
            logits = all_logits[:, -1] if s.padding_side == "left" else all_logits[np.arange(B), last]  # (B, V)
        for n in range(s.max_new_tokens):
            suppressed = s.eos_ids if n < s.min_new_tokens else ()
            logits = process_logits(logits, s.sampling, history, suppressed)
            if self.on_probs is not None:
                for b in running:
                    self.on_probs(b, top_probabilities(logits[b], s.sampling, self.show_probs))
            tokens = choose_tokens(logits, s.sampling, rng)  # (B,)
            self.token_times.append(time.perf_counter())
            if history is not None:
                history.add(tokens)
            events = [(b, *self.accept(b, int(tokens[b]), n + 1)) for b in running]
            running = [b for b in running if self.seqs[b].finish_reason is None]
            yield events
            if not running:
                return
            # decode: every row (finished ones too, ignored) appends one token at slot T + n, its position next_pos.
            step_pos = None if key_mask is None else (next_pos + n)[:, None]  # (B, 1)
            step_mask = None if key_mask is None else key_mask[:, : T + n + 1]  # (B, T+n+1)
            logits = model.step(tokens[:, None], cache, step_pos, step_mask)[:, -1]  # (B, V)

    def accept(self, b: int, token: int, n: int) -> tuple[int, str]:
        """Record sequence b's n-th new token; decide whether it stops there. -> (token, text piece to show)."""
        seq, s = self.seqs[b], self.settings
        seq.token_ids.append(token)
        piece = ""
        if token in s.eos_ids:
            seq.finish_reason = "eos"  # the EOS token is kept in token_ids but never shown as text
        elif seq.text is not None:
            piece = seq.text.push(token)
            if seq.text.stopped:
                seq.finish_reason = "stop"
        if seq.finish_reason is None and n == s.max_new_tokens:
            seq.finish_reason = "length"
        if seq.finish_reason is not None and seq.text is not None:
            piece += seq.text.finish()
        if piece:
            seq.pieces.append(piece)
        return token, piece

    def results(self) -> list[GenerationResult]:
        """Per-sequence results with their stats; call once steps() is exhausted."""
        out = []
        for seq in self.seqs:
            n = len(seq.token_ids)  # a sequence's n tokens were chosen at the batch's first n steps
            stats = record_timing(replace(self.stats, prompt_tokens=len(seq.prompt_ids), new_tokens=n),
                                  self.t_start, self.token_times[:n], self.stats.prompt_tokens)
            text = "".join(seq.pieces) if seq.text is not None else None
            out.append(GenerationResult(text=text, token_ids=seq.token_ids, stats=stats,
                                        finish_reason=seq.finish_reason or "length", prompt_ids=seq.prompt_ids))
        return out


class GenerationStream:
    """What `generate(..., stream=True)` returns: iterate for text pieces as tokens arrive (for a batch, pairs
    (prompt index, piece)); `.result` (or `.results` for a batch) holds the full results once iteration ends."""

    def __init__(self, batch: Batch, batched: bool):
        self.batch, self.batched = batch, batched
        self.results: list[GenerationResult] | None = None

    @property
    def result(self) -> GenerationResult | None:
        return None if self.results is None else self.results[0]

    def __iter__(self):
        for events in self.batch.steps():
            for b, _, piece in events:
                if piece:
                    yield (b, piece) if self.batched else piece
        self.results = self.batch.results()


def generate(model, prompt, max_new_tokens=64, temperature=None, top_k=None, top_p=None, seed=None, *,
             stream=False, return_beams=False, show_probs=0, on_probs=None, **options):
    """Generate after prompt: a string, a list of int token ids, or a list of several of either (a batch).

    Returns a GenerationResult (a list of them for a batch), or with stream=True a GenerationStream yielding text
    pieces. temperature=0 is greedy; every other option is a field of GenerationSettings or SamplingParams
    (min_p, repetition_penalty, presence_penalty, frequency_penalty, logit_bias, min_new_tokens, eos_token_ids, stop,
    context_overflow, padding_side, num_beams, length_penalty, early_stopping). show_probs=K calls
    on_probs(sequence index, [(token id, probability)] * K) at every step. Beam search (num_beams > 1) takes neither
    stream, stop nor show_probs: each raises a ValueError instead of being ignored.
    """
    settings = resolve_settings(model, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=seed, **options)
    prompts, batched = split_prompts(prompt)
    prompts = [encode_prompt(model, p, settings) for p in prompts]
    if (whole_number("show_probs", show_probs) > 0) != (on_probs is not None):
        raise ValueError("show_probs=K and on_probs=callback go together")
    if settings.num_beams > 1:
        check_beam_request(settings, stream, on_probs)
        from .beam_search import beam_search_result

        results = [beam_search_result(model, ids, settings, return_beams) for ids in prompts]
        return results if batched else results[0]
    batch = Batch(model, prompts, settings, show_probs, on_probs)
    if stream:
        if model.tokenizer is None:
            raise ValueError("stream=True yields text, and this model has no tokenizer: use iter_generate for ids")
        return GenerationStream(batch, batched)
    for _ in batch.steps():
        pass
    results = batch.results()
    return results if batched else results[0]


def check_beam_request(settings: GenerationSettings, stream: bool, on_probs) -> None:
    """Refuse what beam search does not do, rather than silently ignore it (beam_search.py says why each is left out).
    """
    if stream:
        raise ValueError("beam search cannot stream: the best sequence is known only at the end")
    if settings.stop:
        raise ValueError("beam search does not take stop strings (a beam cut at one would be scored on fewer tokens "
                         "than it holds): end beams with eos_token_ids, or use stop without num_beams")
    if on_probs is not None:
        raise ValueError("show_probs reports one sequence's next-token distribution per step; beam search scores "
                         "num_beams of them at once: use show_probs without num_beams")


def iter_generate(model, prompt, max_new_tokens=64, temperature=None, top_k=None, top_p=None, seed=None,
                  stats: GenerationStats | None = None, **options):
    """Yield each new token id of one prompt as it is chosen; `stats` (if given) is filled in when the loop ends."""
    settings = resolve_settings(model, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=seed, **options)
    if not is_prompt(prompt):
        raise TypeError(f"iter_generate takes one prompt ({PROMPT_TYPES}); got {type_outline(prompt)}")
    batch = Batch(model, [encode_prompt(model, prompt, settings)], settings)
    for events in batch.steps():
        yield events[0][1]
    if stats is not None:
        vars(stats).update(vars(batch.results()[0].stats))
