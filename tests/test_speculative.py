"""Speculative decoding: the same tokens as plain decoding, in fewer passes.

References: plain greedy decoding (itself transformers' greedy ids, tests/test_model_parity.py) token for token; plain
sampling's exact distribution, enumerated from the model's own probabilities, against thousands of seeded speculative
runs; a KV cache that never saw the rejected slots, compared buffer by buffer.
"""
import copy
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nanollm.speculative as speculative
from nanollm.backends.numpy_backend import NumpyBackend
from nanollm.generation import iter_generate
from nanollm.kv_cache import KVCache
from nanollm.learn import LESSONS
from nanollm.learn import speculation as lesson
from nanollm.logits_processors import TokenHistory, process_logits
from nanollm.model import Model
from nanollm.request import SamplingParams
from nanollm.sampling import filtered_probs
from nanollm.speculative import PromptLookup, verify_token
from tests.generation_fixtures import gpt2_text_model
from tests.kernel_harness import KERNEL_BACKENDS, make_backend
from tests.test_backend_forward import random_weights, small_config


def tiny(arch: str, seed: int, vocab_size: int = 23, **overrides) -> Model:
    """A random-weight model of a few thousand parameters (tests/test_backend_forward.py's shapes)."""
    cfg = small_config(arch, vocab_size=vocab_size, max_seq_len=96, **overrides)
    return Model(cfg, random_weights(cfg, seed), NumpyBackend())


# -- greedy: the same ids as plain greedy, token for token ---------------------------------------------------------

@settings(max_examples=25)
@given(arch=st.sampled_from(["gpt2", "llama"]), seeds=st.tuples(st.integers(0, 999), st.integers(0, 999)),
       prompt=st.lists(st.integers(0, 7), min_size=1, max_size=12), k=st.integers(1, 6), ngram=st.integers(1, 3),
       new=st.integers(1, 24), penalty=st.sampled_from([1.0, 1.4]), min_new=st.integers(0, 3))
def test_speculative_greedy_equals_plain_greedy(arch, seeds, prompt, k, ngram, new, penalty, min_new):
    """Prompt lookup, a different random draft, and the model as its own draft all give plain greedy's ids, with
    a repetition penalty (so each verified position must see the history as the kept tokens leave it) and
    min_new_tokens (EOS suppressed up to a position inside a verified run). The prompts reuse 8 tokens so lookup
    finds matches. The model as its own draft proposes what the model then picks: every proposal is kept."""
    model, draft = tiny(arch, seeds[0]), tiny(arch, seeds[1] + 1000)
    options = dict(max_new_tokens=new, temperature=0, repetition_penalty=penalty, min_new_tokens=min_new,
                   eos_token_ids={3})
    plain = model.generate(prompt, **options)
    lookup = model.generate(prompt, prompt_lookup_num_tokens=k, max_matching_ngram_size=ngram, **options)
    drafted = model.generate(prompt, assistant_model=draft, num_assistant_tokens=k, **options)
    itself = model.generate(prompt, assistant_model=model, num_assistant_tokens=k, **options)
    for run in (lookup, drafted, itself):
        assert run.token_ids == plain.token_ids
        assert run.finish_reason == plain.finish_reason
        assert 0 <= run.stats.accepted_tokens <= run.stats.proposed_tokens
    assert itself.stats.accepted_tokens == itself.stats.proposed_tokens
    assert itself.stats.acceptance_rate == (1.0 if itself.stats.proposed_tokens else 0.0)
    assert (lookup.stats.proposer, drafted.stats.proposer) == ("prompt lookup", "assistant model")


def test_the_model_as_its_own_draft_needs_one_pass_per_k_plus_1_tokens():
    """Every proposal kept: each verification gains k + 1 tokens, so 1 + 5 * (k + 1) = 21 tokens take the prefill
    and 5 verification passes, and the assistant proposed 5 x 3 tokens."""
    model = tiny("llama", 3)
    verifications = []
    out = model.generate([1, 2, 3], max_new_tokens=21, temperature=0, assistant_model=model, num_assistant_tokens=3,
                         eos_token_ids=set(), on_verify=verifications.append)
    assert [(v.step, len(v.proposed), v.accepted) for v in verifications] == [(i, 3, 3) for i in range(1, 6)]
    assert [v.token for v in verifications] == out.token_ids[4::4]  # the model's own token ends each round
    assert (out.stats.proposed_tokens, out.stats.accepted_tokens, out.stats.acceptance_rate) == (15, 15, 1.0)
    assert out.stats.as_dict()["acceptance_rate"] == 1.0  # what --json prints


# -- sampling: exactly plain sampling's distribution ---------------------------------------------------------------

V, NEW, RUNS = 4, 4, 3000
SAMPLING = dict(temperature=1.3, top_k=3, repetition_penalty=1.3)  # top-k zeroes a token: p and q have holes
PROMPT = [0, 1, 2, 0, 1]  # lookup proposes [2, 0] first; later its matches depend on what was drawn


def exact_distribution(model) -> dict:
    """P(t1 .. t4) of plain sampling, enumerated: every prefix in one forward pass, each position's logits processed
    and filtered as the loop does (process_logits, then sampling.filtered_probs) and multiplied along the tokens."""
    params = SamplingParams(**SAMPLING)
    sequences = list(itertools.product(range(V), repeat=NEW))  # (V^4,) every outcome
    logits = model.forward([PROMPT + list(t[:-1]) for t in sequences])  # (V^4, L+3, V)
    L, exact = len(PROMPT), {}
    for row, tokens in enumerate(sequences):
        history, probability = TokenHistory([PROMPT], V), 1.0
        for i, token in enumerate(tokens):
            processed = process_logits(logits[row, L - 1 + i][None].copy(), params, history)[0]  # (V,)
            p = filtered_probs(processed, params.temperature, params.top_k).astype(np.float64)
            probability *= p[token] / p.sum()
            history.add(np.array([token]))
        exact[tokens] = probability
    return exact


def chi_square(counts: dict, exact: dict, runs: int) -> tuple[float, float]:
    """Pearson's statistic over the outcomes (those expected fewer than 5 times pooled into one cell), and the value
    a correct sampler exceeds with probability 1e-6 (Wilson-Hilferty's approximation of the chi-square quantile)."""
    cells, rare_seen, rare_expected = [], 0, 0.0
    for outcome, probability in exact.items():
        expected, seen = probability * runs, counts.get(outcome, 0)
        if expected >= 5:
            cells.append((seen, expected))
        else:
            rare_seen, rare_expected = rare_seen + seen, rare_expected + expected
    cells.append((rare_seen, rare_expected))
    assert sum(counts.get(o, 0) for o, p in exact.items() if p == 0) == 0  # no impossible outcome ever drawn
    statistic = sum((seen - expected) ** 2 / expected for seen, expected in cells if expected > 0)
    df, z = len(cells) - 1, 4.753  # z: the normal quantile of 1 - 1e-6
    return statistic, df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def draw_from_p_on_rejection(p, q, proposal, u_keep, u_draw):
    """A wrong rule, the classic slip: on rejection draw from p itself instead of norm(max(0, p - q))."""
    token, kept = verify_token(p, q, proposal, u_keep, u_draw)
    return (token, True) if kept else (speculative.draw(p, u_draw), False)


@pytest.fixture(scope="module")
def sampler():
    model, draft = tiny("gpt2", 11, vocab_size=V), tiny("gpt2", 12, vocab_size=V)
    return model, draft, exact_distribution(model)


@pytest.mark.parametrize("proposer", ["prompt lookup", "assistant model"])
def test_speculative_sampling_has_plain_sampling_distribution(sampler, proposer, monkeypatch):
    """The first 4 tokens over 3000 seeds against plain sampling's exact distribution (256 outcomes): the rejection
    rule passes the chi-square test, and the same test, same seeds, fails a wrong rule (drawing from p instead of
    the residual after a rejection). That is the proof the test can fail: accepting every proposal would fail it
    further still (a proposal with p = 0 under top-k would then be drawn, which the test refuses outright)."""
    model, draft, exact = sampler
    options = dict(max_new_tokens=NEW, eos_token_ids=set(), **SAMPLING)
    if proposer == "prompt lookup":
        options.update(prompt_lookup_num_tokens=2)
    else:
        options.update(assistant_model=draft, num_assistant_tokens=2)

    def statistic():
        counts, proposed = {}, 0
        for seed in range(RUNS):
            out = model.generate(PROMPT, seed=seed, **options)
            counts[tuple(out.token_ids)] = counts.get(tuple(out.token_ids), 0) + 1
            proposed += out.stats.proposed_tokens
        assert proposed > RUNS  # most runs verified proposals: the rule was exercised, not bypassed
        return chi_square(counts, exact, RUNS)

    value, limit = statistic()
    assert value < limit, (value, limit)
    monkeypatch.setattr(speculative, "verify_token", draw_from_p_on_rejection)
    wrong, _ = statistic()
    assert wrong > 3 * limit, (wrong, limit)


def test_the_rejection_rule_by_hand():
    """p = [0.5, 0.3, 0.2], a draft's q = [0.2, 0.6, 0.2], proposal 1: kept with probability p/q = 0.5; the residual
    max(0, p - q) = [0.3, 0, 0] sends every rejection to token 0. Prompt lookup's point mass on token 2: kept with
    probability 0.2, else drawn from p without token 2, normalised: [0.625, 0.375, 0]."""
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.6, 0.2])
    assert verify_token(p, q, 1, 0.49, 0.9) == (1, True)
    assert verify_token(p, q, 1, 0.51, 0.9) == (0, False)
    assert verify_token(p, None, 2, 0.19, 0.0) == (2, True)
    assert verify_token(p, None, 2, 0.21, 0.6) == (0, False)  # 0.6 x 0.8 = 0.48 < 0.5
    assert verify_token(p, None, 2, 0.21, 0.7) == (1, False)  # 0.56 > 0.5


# -- prompt lookup ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("context, ngram, k, proposals", [
    ([5, 6, 7, 9, 5, 6], 2, 3, [7, 9, 5]),  # the docstring's example
    ([5, 6, 7, 5, 8, 5, 6], 2, 2, [7, 5]),  # the 2-gram [5, 6] wins over the 1-gram [6]'s
    ([5, 6, 7, 5, 8, 9, 5], 2, 2, [6, 7]),  # no 2-gram [9, 5] earlier: the 1-gram [5], leftmost occurrence first
    ([5, 6, 7, 8], 3, 4, []),  # 8 never occurred before: nothing proposed
    ([4, 4, 4], 2, 5, [4]),  # the continuation stops at the context's end
    ([1], 2, 3, []),
])
def test_prompt_lookup_matches_transformers_rule(context, ngram, k, proposals):
    """transformers' PromptLookupCandidateGenerator: the longest n-gram first, the leftmost earlier match."""
    assert PromptLookup(ngram).propose(context, k) == (proposals, [None] * len(proposals))


def test_prompt_lookup_is_faster_in_passes_on_a_repetitive_continuation():
    """The demo-size model told to repeat: lookup proposes the repeat, so far fewer verification passes than tokens."""
    model = tiny("llama", 4)
    prompt = [1, 2, 3, 4, 5, 6, 7] * 4
    plain = model.generate(prompt, max_new_tokens=30, temperature=0)
    passes = []
    fast = model.generate(prompt, max_new_tokens=30, temperature=0, prompt_lookup_num_tokens=8, on_verify=passes.append)
    assert fast.token_ids == plain.token_ids
    assert len(passes) == 29 - fast.stats.accepted_tokens  # each pass gains its kept proposals + one token


# -- the cache rolls back exactly ------------------------------------------------------------------------------

@settings(max_examples=40)
@given(kept=st.integers(1, 9), written=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_truncate_leaves_the_cache_as_if_the_rejected_slots_were_never_written(kept, written, seed):
    """Two caches receive the same `kept` slots; one also receives `written` more, then is cut back: every buffer,
    ids and positions included, equals the other's, byte for byte."""
    cfg = small_config("llama")
    rng = np.random.default_rng(seed)
    be = NumpyBackend()
    caches = [KVCache.allocate(be, cfg, batch_size=2, max_len=16) for _ in range(2)]
    shape = (2, cfg.n_kv_head, kept + written, cfg.head_dim)
    k, v = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    ids, positions = rng.integers(1, 50, (2, kept + written)), rng.integers(1, 50, (2, kept + written))
    for cache, n in zip(caches, (kept + written, kept)):
        start = cache.append(ids[:, :n], positions[:, :n])
        for layer in range(cfg.n_layer):
            cache.update(be, layer, k[:, :, :n], v[:, :, :n], start)
    caches[0].truncate(kept)
    a, b = caches
    assert a.length == b.length == kept
    for mine, theirs in zip(a.k + a.v + [a.ids, a.positions], b.k + b.v + [b.ids, b.positions]):
        assert np.array_equal(mine, theirs)
    with pytest.raises(ValueError, match=f"holds {kept} positions; it cannot be cut to {kept + 1}"):
        a.truncate(kept + 1)


def test_a_verification_rolled_back_leaves_what_a_plain_step_leaves():
    """The model's own passes: [x, d1, d2, d3] run and cut back to [x, d1] equals running [x, d1] alone: the kept
    slots to float32 rounding (a pass of 4 positions against one of 2), the rest exactly zero, and the next step
    reads the same."""
    model = tiny("llama", 5)
    prompt = np.array([[3, 1, 4, 1, 5]])
    caches = [model.new_cache(1, 16) for _ in range(2)]
    for cache, run in zip(caches, ([[9, 2, 6, 5]], [[9, 2]])):
        model.step(prompt, cache)
        model.step(np.array(run), cache, last_only=False)
    caches[0].truncate(7)
    a, b = caches
    for mine, theirs in zip(a.k + a.v, b.k + b.v):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
        assert not mine[:, :, 7:].any()
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.positions, b.positions) and a.length == b.length
    after = [model.step(np.array([[8]]), cache) for cache in caches]
    np.testing.assert_allclose(after[0], after[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_speculative_decoding_on_the_kernel_backends(backend):
    """The cache's buffers live on the backend (CuPy arrays on a GPU): truncate zeroes them there, and both proposers
    give the NumPy backend's plain greedy ids."""
    cfg = small_config("llama", vocab_size=23)
    weights = random_weights(cfg, 4)
    model = Model(cfg, weights, make_backend(backend))
    prompt = [1, 2, 3, 4, 1, 2, 3, 4, 1]
    cache = model.new_cache(1, 16)
    model.step(np.array([prompt]), cache)
    cache.truncate(5)
    assert not any(model.backend.to_numpy(a)[:, :, 5:].any() for a in cache.k + cache.v)
    reference = Model(cfg, weights, NumpyBackend()).generate(prompt, max_new_tokens=10, temperature=0)
    for options in (dict(prompt_lookup_num_tokens=3), dict(assistant_model=model, num_assistant_tokens=3)):
        out = model.generate(prompt, max_new_tokens=10, temperature=0, **options)
        assert out.token_ids == reference.token_ids
        assert out.stats.accepted_tokens > 0


# -- stops inside a kept run -----------------------------------------------------------------------------------

def test_eos_and_max_new_tokens_inside_a_kept_run_cut_where_plain_decoding_does():
    """The model as its own draft keeps runs of 6; an EOS that greedy emits as its 5th token, and a max_new_tokens
    of 9 (a run would reach 13), both end the output exactly where plain decoding ends it."""
    model = tiny("gpt2", 6)
    prompt = [2, 7, 1, 8]
    free = model.generate(prompt, max_new_tokens=12, temperature=0, eos_token_ids=set()).token_ids
    eos = {free[4]}
    assert free[4] not in free[:4]
    for options in (dict(eos_token_ids=eos, max_new_tokens=12), dict(eos_token_ids=set(), max_new_tokens=9)):
        plain = model.generate(prompt, temperature=0, **options)
        fast = model.generate(prompt, temperature=0, assistant_model=model, num_assistant_tokens=6, **options)
        assert (fast.token_ids, fast.finish_reason) == (plain.token_ids, plain.finish_reason)
        assert list(iter_generate(model, prompt, temperature=0, assistant_model=model, **options)) == plain.token_ids
    assert plain.finish_reason == "length" and len(plain.token_ids) == 9


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return gpt2_text_model(tmp_path_factory.mktemp("gpt2text"))


def test_a_stop_string_inside_a_kept_run_cuts_and_is_never_streamed(text_model):
    """Greedy text's characters 6-9 as a stop string: the model as its own draft keeps the whole run that spells
    it, and the text, streamed or not, still ends just before it, as plain decoding's does."""
    free = text_model.generate("Hello there", max_new_tokens=16, temperature=0).text
    stop = free[6:9]
    plain = text_model.generate("Hello there", max_new_tokens=16, temperature=0, stop=stop)
    options = dict(max_new_tokens=16, temperature=0, stop=stop, assistant_model=text_model, num_assistant_tokens=8)
    fast = text_model.generate("Hello there", **options)
    streamed = text_model.generate("Hello there", stream=True, **options)
    assert (fast.text, fast.token_ids, fast.finish_reason) == (plain.text, plain.token_ids, "stop")
    assert "".join(streamed) == plain.text == free[: free.index(stop)]


# -- refusals ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (dict(prompt=[[1, 2], [3]], prompt_lookup_num_tokens=3), "runs one sequence; got a batch of 2 prompts"),
    (dict(num_beams=2, prompt_lookup_num_tokens=3), r"and beam search \(num_beams=2\)"),
    (dict(kv_cache=False, prompt_lookup_num_tokens=3), "cannot run with kv_cache=False"),
    (dict(on_choice=print, prompt_lookup_num_tokens=3), r"on_choice \(--show-probs\)"),
    (dict(prompt_lookup_num_tokens=0), "prompt_lookup_num_tokens must be a whole number >= 1"),
    (dict(prompt_lookup_num_tokens=2.5), "prompt_lookup_num_tokens must be a whole number >= 1"),
    (dict(prompt_lookup_num_tokens=2, max_matching_ngram_size=0), "max_matching_ngram_size must be a whole number"),
    (dict(num_assistant_tokens=0), "num_assistant_tokens must be a whole number >= 1"),
    (dict(prompt_lookup_num_tokens=2, assistant="self"), "two proposers for speculative decoding: give one"),
    (dict(assistant="other vocabulary"), "vocabulary of 24 tokens and the model 23"),
    (dict(assistant="short context", max_new_tokens=40), r"context of 32 tokens is shorter than the prompt \+ "
                                                          r"max_new_tokens = 42"),
])
def test_what_speculative_decoding_refuses_is_one_error_naming_the_option(options, message):
    model = tiny("gpt2", 7)
    assistants = {"self": model, "other vocabulary": tiny("gpt2", 8, vocab_size=24),
                  "short context": Model(small_config("gpt2", vocab_size=23, max_seq_len=32),
                                         random_weights(small_config("gpt2", vocab_size=23, max_seq_len=32), 9),
                                         NumpyBackend())}
    prompt = options.pop("prompt", [1, 2])
    if "assistant" in options:
        options["assistant_model"] = assistants[options.pop("assistant")]
    with pytest.raises(ValueError, match=message):
        model.generate(prompt, max_new_tokens=options.pop("max_new_tokens", 4), **options)


def test_an_assistant_that_is_not_a_model_or_reads_tokens_differently_is_refused(text_model):
    with pytest.raises(TypeError, match="assistant_model must be a loaded model .nanollm.load., got str"):
        text_model.generate("Hi", assistant_model="distilgpt2")
    other = copy.copy(text_model)
    other.tokenizer = copy.deepcopy(text_model.tokenizer)
    other.tokenizer.decode_rules.token_bytes[262] = b"?"
    with pytest.raises(ValueError, match=r"tokenizer is not the model's: token 262 is b' the' to the model, b'\?' "):
        text_model.generate("Hi", assistant_model=other)


# -- the lesson --------------------------------------------------------------------------------------------------

def test_the_lesson_prints_numbers_that_hold(capsys):
    """Lesson 14's table of expected tokens per pass is Leviathan et al.'s (1 - a^(k+1)) / (1 - a), computed here
    by summing the series 1 + a + ... + a^k; its runs say the same tokens as greedy, with the stats' counts."""
    assert any(entry.run is lesson.run for entry in LESSONS)
    lesson.run()
    out = capsys.readouterr().out
    for a in lesson.RATES:
        for k in lesson.LOOKAHEADS:
            assert f"{sum(a ** i for i in range(k + 1)):.2f}" in out.split(f"a = {a:.1f}")[1].splitlines()[0]
    assert "same tokens as greedy: True" in out
    model = lesson.demo_model()
    ids = model.tokenizer.encode(lesson.PROMPT)
    fast = model.generate(ids, max_new_tokens=lesson.NEW_TOKENS, temperature=0, repetition_penalty=1.0,
                          prompt_lookup_num_tokens=lesson.K)
    assert f"proposed {fast.stats.proposed_tokens}, accepted {fast.stats.accepted_tokens}" in out
