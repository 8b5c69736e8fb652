"""What a generation request is: its settings, checked once; its prompts, checked and encoded; and what it returns.

Everything here is decided before the first forward pass, so the loops (generation.py, beam_search.py) can trust
their inputs: a bad setting or prompt is one ValueError naming it, never a failure halfway through a generation.

    SamplingParams, GenerationSettings   the options, each checked (whole_number, check_sampling_args)
    resolve_settings                      keyword arguments + the model's generation_config.json -> settings
    split_prompts, encode_prompt          a prompt or a batch -> validated token ids that fit the context
    check_beam_request                    what beam search does not do (speculative.py checks its own requests)
    GenerationResult, GenerationStats     what comes back: text, ids, why it stopped, TTFT/TPOT/throughput/memory
"""
import math
import resource
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np

CONTEXT_OVERFLOW = ("error", "truncate_left")
# transformers' top_k when sampling is on and nothing names one (GenerationConfig._get_default_generation_params)
TRANSFORMERS_DEFAULT_TOP_K = 50


def whole_number(name: str, value, minimum: int = 0) -> int:
    """value as an int if it is a whole number >= minimum, else a ValueError naming the setting.

    Examples: 3 -> 3, 2.0 -> 2 (a whole number written as a float, as JSON may); 2.5, True, "3", inf -> error;
    10**400 -> 10**400 (an int is whole already: float() of it would overflow).
    """
    whole = isinstance(value, Integral) or (isinstance(value, Real) and float(value).is_integer())
    if isinstance(value, bool) or not whole or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def check_sampling_args(temperature: float, top_k: int, top_p: float, min_p: float = 0.0):
    """Refuse settings that have no meaning, with a message naming the setting."""
    if not (temperature >= 0):  # also rejects NaN
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    whole_number("top_k (0 disables it)", top_k)
    if not (0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not (0 <= min_p <= 1):
        raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {min_p}")


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. Defaults are plain multinomial sampling at temperature 1."""

    temperature: float = 1.0  # 0.7; 0 is greedy
    top_k: int = 0  # 50; 0 disables
    top_p: float = 1.0  # 0.9; 1 disables
    min_p: float = 0.0  # 0.05; 0 disables
    repetition_penalty: float = 1.0  # 1.2; 1 disables
    presence_penalty: float = 0.0  # 0.5; 0 disables (OpenAI range -2 .. 2)
    frequency_penalty: float = 0.0  # 0.5; 0 disables
    logit_bias: dict = field(default_factory=dict)  # {token id: bias}, e.g. {50256: -100.0} bans end-of-text

    def __post_init__(self):
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.min_p)
        object.__setattr__(self, "top_k", whole_number("top_k", self.top_k))  # 2.0 -> 2, once checked (frozen)
        if not (self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        for token, bias in self.logit_bias.items():
            if int(token) != token or token < 0 or not np.isfinite(bias):
                raise ValueError(f"logit_bias maps token ids >= 0 to finite numbers, got {token!r}: {bias!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_history(self) -> bool:
        """Whether a processor reads the tokens seen so far (then the loop keeps a TokenHistory)."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


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
    batch_tokens_per_s: float = 0.0  # a batch: every sequence's new tokens / the whole run, prefill included
    step_times_s: list = field(default_factory=list)  # seconds of each decode step (n-1,): TPOT over the context
    proposer: str = ""  # speculative decoding: "prompt lookup" or "assistant model" ("" when off)
    proposed_tokens: int = 0  # proposed tokens the model judged (those after a stop in a kept run never were)
    accepted_tokens: int = 0  # of those, the tokens it accepted (each a forward pass saved)
    acceptance_rate: float = 0.0  # accepted / proposed

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
        stats.step_times_s = gaps.tolist()
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
    kv_cache: bool = True  # False: every step recomputes the whole sequence (to feel what the cache saves)
    prompt_lookup_num_tokens: int | None = None  # 10: speculative decoding, proposals copied from the context
    max_matching_ngram_size: int = 2  # prompt lookup: the longest n-gram it matches (transformers' default)
    num_assistant_tokens: int = 5  # an assistant model's proposals per verification

    def __post_init__(self):
        # Checked first, then stored as ints (2.0 -> 2), so NumPy never sees a float count. Frozen: object.__setattr__.
        for name, minimum in (("max_new_tokens", 0), ("min_new_tokens", 0), ("num_beams", 1),
                              ("max_matching_ngram_size", 1), ("num_assistant_tokens", 1)):
            object.__setattr__(self, name, whole_number(name, getattr(self, name), minimum))
        for name, minimum in (("seed", 0), ("prompt_lookup_num_tokens", 1)):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, whole_number(name, getattr(self, name), minimum))
        if self.context_overflow not in CONTEXT_OVERFLOW:
            raise ValueError(f"context_overflow must be one of {CONTEXT_OVERFLOW}, got {self.context_overflow!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if not isinstance(self.kv_cache, bool):
            raise ValueError(f"kv_cache must be True or False, got {self.kv_cache!r}")
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


@dataclass(frozen=True)
class Option:
    """One option of a generation request: generate()'s keyword, the command line's flag (--top-p for top_p) and,
    where transformers reads it there too, a key of the model's generation_config.json."""

    name: str  # "top_p"
    kind: type  # float, int, bool, str or dict: what the flag parses, and what the file must hold
    help: str
    from_file: str = "no"  # "no", "always", or "sampling": the file's value applies only when it says do_sample
    default: object = None  # when neither the caller nor the file sets it; a callable takes whether sampling is on
    minimum: int = 0  # counts (kind int): the least value that means something
    flag: str = ""  # the command line's flag where it is not the name with dashes: "--prompt-lookup"


# Every option, once. resolve_settings, the loader (generation_config.json) and the command line read this table.
OPTIONS = (
    Option("max_new_tokens", int, "tokens to generate at most", default=64),
    Option("temperature", float, "0 is greedy", "sampling", lambda sampling: 1.0 if sampling else 0.0),
    Option("top_k", int, "keep the k most likely tokens (0: every one)", "sampling",
           lambda sampling: TRANSFORMERS_DEFAULT_TOP_K if sampling else 0),
    Option("top_p", float, "keep the fewest tokens whose probabilities reach p (1: every one)", "sampling", 1.0),
    Option("min_p", float, "drop tokens less likely than min_p x the most likely (0: none)", "sampling", 0.0),
    Option("repetition_penalty", float, "make every token seen so far less likely (1: off)", "always", 1.0),
    Option("presence_penalty", float, "subtract this from the logit of every token generated so far", default=0.0),
    Option("frequency_penalty", float, "subtract this times each token's count so far", default=0.0),
    Option("logit_bias", dict, "add a bias to chosen tokens' logits", default={}),
    Option("min_new_tokens", int, "no end of sequence before this many new tokens", "always", 0),
    Option("eos_token_ids", list, "the tokens that end a sequence (default: the model's)"),
    Option("stop", tuple, "strings that end a sequence, never shown", default=()),
    Option("seed", int, "the random generator's seed: the same seed, the same text"),
    Option("context_overflow", str, "a prompt too long for the context: 'error' or 'truncate_left'",
           default="error"),
    Option("padding_side", str, "where a batch's shorter prompts are padded: 'left' or 'right'", default="left"),
    Option("num_beams", int, "> 1: beam search", "always", 1, minimum=1),
    Option("length_penalty", float, "beam search: a beam's score is divided by its length to this power",
           "always", 1.0),
    Option("early_stopping", bool, "beam search: stop when num_beams beams are done (true, false or never)",
           "always", False),
    Option("kv_cache", bool, "keep keys and values between steps (False: recompute every position, every step)",
           default=True),
    # Speculative decoding (speculative.py), with transformers' names. Not read from generation_config.json: they
    # change how fast the tokens come, never which, and a file that turned them on would refuse every batch.
    Option("prompt_lookup_num_tokens", int, "speculative decoding: propose K tokens that followed the latest n-gram "
           "earlier in the prompt or output, verified in one pass (same tokens, fewer passes)", minimum=1,
           flag="--prompt-lookup"),
    Option("max_matching_ngram_size", int, "--prompt-lookup: the longest n-gram matched (default 2)", default=2,
           minimum=1, flag="--max-matching-ngram"),
    Option("num_assistant_tokens", int, "--assistant-model: tokens the assistant proposes per verification "
           "(default 5)", default=5, minimum=1),
)
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                   "frequency_penalty", "logit_bias")  # SamplingParams' fields; the others are GenerationSettings'


def resolve_settings(model, **given) -> GenerationSettings:
    """generate()'s options (OPTIONS) -> GenerationSettings. Unset ones follow the model's generation_config.json as
    transformers does: greedy unless it says do_sample, and its temperature/top_k/top_p/min_p only when sampling."""
    unknown = sorted(given.keys() - {o.name for o in OPTIONS})
    if unknown:
        raise TypeError(f"generate() got unknown options {unknown}; known: {', '.join(o.name for o in OPTIONS)}")
    file = model.generation_defaults
    sampling = file.get("do_sample", False)

    def value(o: Option):
        if given.get(o.name) is not None:
            return given[o.name]
        if o.from_file == "always" or (o.from_file == "sampling" and sampling):
            if file.get(o.name) is not None:
                return file[o.name]
        return o.default(sampling) if callable(o.default) else o.default

    values = {o.name: value(o) for o in OPTIONS}
    for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
                 "length_penalty"):
        values[name] = float(values[name])  # 1 -> 1.0, once checked for a number by the settings below
    values["logit_bias"] = dict(values["logit_bias"])  # the request's own copy
    params = SamplingParams(**{name: values.pop(name) for name in SAMPLING_FIELDS})
    checked_token_ids(list(params.logit_bias), model.config.vocab_size, "logit_bias")
    stop, eos = values.pop("stop"), values.pop("eos_token_ids")
    if eos is None:
        eos = eos_ids(model)
    else:
        eos = checked_token_ids(eos, model.config.vocab_size, "the eos_token_ids argument")
    return GenerationSettings(sampling=params, eos_ids=frozenset(eos), stop=(stop,) if isinstance(stop, str) else
                              tuple(stop), **values)


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


def check_beam_request(settings: GenerationSettings, stream: bool, on_choice) -> None:
    """Refuse what beam search does not do, rather than silently ignore it (beam_search.py says why each is left out).
    """
    if stream:
        raise ValueError("beam search cannot stream: the best sequence is known only at the end")
    if settings.stop:
        raise ValueError("beam search does not take stop strings (a beam cut at one would be scored on fewer tokens "
                         "than it holds): end beams with eos_token_ids, or use stop without num_beams")
    if not settings.kv_cache:
        raise ValueError("beam search always keeps its KV cache (kv_cache=False shows what the cache saves in the "
                         "greedy and sampling loop): use it without num_beams")
    if on_choice is not None:
        raise ValueError("on_choice (--show-probs) reports one sequence's choice per step; beam search scores "
                         "num_beams of them at once: use it without num_beams")
