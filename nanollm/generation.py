"""The generation loop: prefill the prompts once, then decode one token per sequence per step against the KV cache.

    prompt ids --prefill--> cache filled, logits of each prompt's last position --process, choose--> tokens
    tokens --decode step (T=1)--> cache grows by one, next logits --process, choose--> tokens ... until each stops

The prefix is never recomputed: a decode step costs one position per sequence plus attention over the cache.

Several prompts run as one batch. Shorter prompts are padded to the longest (left padding by default, as for
transformers' decoder-only models; right padding is supported too). Padding is invisible to the model: its cache
slots are hidden by a key mask, and every sequence gets its own positions, so a padded sequence computes what it
would alone. Each sequence stops on its own; a finished one keeps riding along (its tokens are ignored) until the
last one stops, which keeps the cache rectangular.

The loop (`Batch.steps`) reads: prefill, choose, then one decode step after another until every sequence stops.
The decode step is the one part that varies: `Batch.decode` runs the tokens just chosen, one position per sequence;
speculative decoding (speculative.py) puts its own step in its place, which verifies several proposed tokens in one
pass and chooses each through the same `process`, `choose` and `record` (so stops, stats and history are the loop's).

Which token comes next is logits_processors.py; when to stop and what text is shown is stopping.py; beam search is
beam_search.py; the settings, prompt checks and results are request.py. `generate` is the public entry point
(`model.generate` calls it).
"""
import time
from dataclasses import dataclass, field, replace

import numpy as np

from .beam_search import beam_search_result
from .logits_processors import TokenHistory, choose_tokens, draw_uniforms, explain_choice, process_logits
from .request import (PROMPT_TYPES, GenerationResult, GenerationSettings, GenerationStats, check_beam_request,
                      encode_prompt, is_prompt, record_timing, resolve_settings, split_prompts, type_outline)
from .speculative import check_speculative_request, speculator
from .stopping import TextStream


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

    def __init__(self, model, prompts: list[list[int]], settings: GenerationSettings, on_choice=None,
                 assistant_model=None, on_verify=None):
        self.model, self.settings = model, settings
        self.on_choice = on_choice  # on_choice(sequence index, logits_processors.Choice) after every choice
        self.assistant_model = assistant_model  # a draft model for speculative decoding (speculative.py), or None
        self.on_verify = on_verify  # on_verify(speculative.Verification) after every verification pass
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
        self.chosen = 0  # new tokens chosen so far per sequence (finished sequences keep counting, ignored)
        self.last: np.ndarray | None = None  # (B,) the tokens chosen last: the next decode step's input

    def steps(self):
        """Yield, after each step, a list of (sequence index, token, text piece) for every token it chose: one per
        running sequence for a decode step, as many as the model accepted for a speculative one."""
        if self.settings.max_new_tokens == 0:
            return
        speculating = speculator(self, self.assistant_model)  # None unless a proposer was asked for
        next_step = self.decode if speculating is None else speculating.step
        logits = self.prefill()  # (B, V)
        yield self.choose(logits)
        while self.running:
            yield next_step()

    def prefill(self) -> np.ndarray:
        """Allocate the cache, the random generator and the token history; run every prompt position at once.
        -> the logits of each prompt's last position (B, V)."""
        model, s = self.model, self.settings
        B, T = len(self.seqs), max(len(q.prompt_ids) for q in self.seqs)
        self.T = T  # the padded prompt length: new tokens take slots T, T+1, ...
        self.cache = model.new_cache(batch_size=B, max_len=T + s.max_new_tokens)  # first: it checks memory suffices
        self.stats.kv_cache_bytes += self.cache.nbytes
        self.ids, self.positions, self.key_mask, last, self.next_pos = self.prefill_inputs()  # (B, T) ids
        self.begin()
        if self.key_mask is None:  # no padding: every row's last position is T-1
            return model.step(self.ids, self.cache)[:, -1]  # (B, V)
        mask = self.key_mask[:, :T]
        # Right padding puts each row's last prompt token at a different position, so every position is projected
        # to the vocabulary (B, T, V) and each row's own picked out; left padding needs only the last.
        left = s.padding_side == "left"
        all_logits = model.step(self.ids, self.cache, self.positions, mask, last_only=left)  # (B, T|1, V)
        return all_logits[:, -1] if left else all_logits[np.arange(B), last]  # (B, V)

    def decode(self) -> list:
        """One decode step: every row (finished ones too, ignored) runs the token it chose last at the next slot,
        at its own next position. -> the events of the tokens chosen from the logits that come out."""
        s, n = self.settings, self.chosen  # n tokens chosen per sequence so far; the n-th runs now
        tokens = self.last[:, None]  # (B, 1)
        step_pos = (self.next_pos + n - 1)[:, None]  # (B, 1)
        step_mask = None if self.key_mask is None else self.key_mask[:, : self.T + n]  # (B, T+n)
        if s.kv_cache:
            logits = self.model.step(tokens, self.cache, step_pos, step_mask)[:, -1]  # (B, V)
        else:  # what the cache saves: recompute every position so far, every step (--no-kv-cache)
            self.ids = np.concatenate([self.ids, tokens], 1)  # (B, T+n)
            self.positions = np.concatenate([self.positions, step_pos], 1)  # (B, T+n)
            self.cache.restart()
            logits = self.model.step(self.ids, self.cache, self.positions, step_mask)[:, -1]  # (B, V)
        return self.choose(logits)

    def begin(self) -> None:
        """What choosing needs before the first choice, whoever runs the model: the seeded random generator, the
        token history, every row running, the clock. prefill calls it; the server's scheduler calls it instead of
        prefill and feeds choose the logits of its own batched passes (paged_runner.py)."""
        s = self.settings
        self.rng = np.random.default_rng(s.seed)
        self.history = TokenHistory([q.prompt_ids for q in self.seqs], self.model.config.vocab_size) \
            if s.sampling.uses_history else None
        self.running = list(range(len(self.seqs)))
        self.t_start = time.perf_counter()

    def process(self, logits: np.ndarray, n: int, history=None) -> np.ndarray:
        """The processors (logits_processors.py) for each sequence's n-th new token: EOS is suppressed while fewer
        than min_new_tokens precede it. history: the batch's own unless given (a draft model's copy). (B, V)"""
        suppressed = self.settings.eos_ids if n <= self.settings.min_new_tokens else ()
        return process_logits(logits, self.settings.sampling, self.history if history is None else history,
                              suppressed)  # (B, V)

    def choose(self, logits: np.ndarray) -> list:
        """Process the logits of every row's next token (B, V), choose by the backend's sampler, record. -> events"""
        s, n = self.settings, self.chosen + 1
        raw, logits = logits, self.process(logits, n)  # (B, V) each
        u = draw_uniforms(s.sampling, self.rng, len(logits))  # (B,) the draw's uniform numbers (zeros when greedy)
        tokens = choose_tokens(logits, s.sampling, u, self.model.backend)  # (B,)
        if self.on_choice is not None:
            for b in self.running:
                self.on_choice(b, explain_choice(n, raw[b], logits[b], s.sampling, u[b], tokens[b]))
        return self.record(tokens)

    def record(self, tokens: np.ndarray) -> list:
        """Every running sequence takes its token (B,): the history, the time, its stops (`accept`). -> events"""
        self.token_times.append(time.perf_counter())
        self.chosen += 1
        self.last = tokens
        if self.history is not None:
            self.history.add(tokens)
        events = [(b, *self.accept(b, int(tokens[b]), self.chosen)) for b in self.running]
        self.running = [b for b in self.running if self.seqs[b].finish_reason is None]
        return events

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
        total = sum(len(seq.token_ids) for seq in self.seqs)  # every sequence's new tokens
        elapsed = self.token_times[-1] - self.t_start if self.token_times else 0.0
        batch_rate = total / elapsed if elapsed > 0 else 0.0
        for seq in self.seqs:
            n = len(seq.token_ids)  # a sequence's n tokens were chosen at the batch's first n steps
            stats = record_timing(replace(self.stats, prompt_tokens=len(seq.prompt_ids), new_tokens=n,
                                          batch_tokens_per_s=batch_rate),
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
             stream=False, return_beams=False, on_choice=None, assistant_model=None, on_verify=None, **options):
    """Generate after prompt: a string, a list of int token ids, or a list of several of either (a batch).

    Returns a GenerationResult (a list of them for a batch), or with stream=True a GenerationStream yielding text
    pieces. temperature=0 is greedy; every other option is a field of GenerationSettings or SamplingParams
    (min_p, repetition_penalty, presence_penalty, frequency_penalty, logit_bias, min_new_tokens, eos_token_ids, stop,
    context_overflow, padding_side, num_beams, length_penalty, early_stopping, kv_cache: request.OPTIONS). on_choice is
    called as on_choice(sequence index, logits_processors.Choice) after every token is chosen: every stage of the
    choice (--show-probs prints them). Beam search (num_beams > 1) takes neither stream, stop nor on_choice: each
    raises a ValueError instead of being ignored.

    Speculative decoding (speculative.py; one prompt): prompt_lookup_num_tokens=k proposes k tokens copied from the
    context, assistant_model=a smaller Model with the same tokenizer proposes num_assistant_tokens; either way the
    tokens are those plain decoding gives (greedy: the same ids; sampling: the same distribution), in fewer passes.
    on_verify(speculative.Verification) is called after each verification pass (--trace prints them).
    """
    settings = resolve_settings(model, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=seed, **options)
    prompts, batched = split_prompts(prompt)
    prompts = [encode_prompt(model, p, settings) for p in prompts]
    check_speculative_request(model, settings, prompts, on_choice, assistant_model)
    if settings.num_beams > 1:
        check_beam_request(settings, stream, on_choice)
        results = [beam_search_result(model, ids, settings, return_beams) for ids in prompts]
        return results if batched else results[0]
    batch = Batch(model, prompts, settings, on_choice, assistant_model, on_verify)
    if stream:
        if model.tokenizer is None:
            raise ValueError("stream=True yields text, and this model has no tokenizer: use iter_generate for ids")
        return GenerationStream(batch, batched)
    for _ in batch.steps():
        pass
    results = batch.results()
    return results if batched else results[0]


def iter_generate(model, prompt, max_new_tokens=64, temperature=None, top_k=None, top_p=None, seed=None,
                  stats: GenerationStats | None = None, assistant_model=None, **options):
    """Yield each new token id of one prompt as it is chosen; `stats` (if given) is filled in when the loop ends."""
    settings = resolve_settings(model, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=seed, **options)
    if not is_prompt(prompt):
        raise TypeError(f"iter_generate takes one prompt ({PROMPT_TYPES}); got {type_outline(prompt)}")
    prompts = [encode_prompt(model, prompt, settings)]
    check_speculative_request(model, settings, prompts, None, assistant_model)
    batch = Batch(model, prompts, settings, assistant_model=assistant_model)
    for events in batch.steps():  # a speculative step may choose several tokens
        yield from (token for _, token, _ in events)
    if stats is not None:
        vars(stats).update(vars(batch.results()[0].stats))
