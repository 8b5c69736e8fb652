"""Logits processors and samplers: transformers parity, invariants (hypothesis) and hand-derived examples.

Parity: on next-token logits of random-weight GPT-2 and Llama checkpoints, the distribution nanollm draws from
(penalties -> temperature -> top-k -> softmax -> top-p -> min-p, renormalised) equals softmax of the scores that
transformers' LogitsProcessorList (RepetitionPenalty, Temperature, TopK, TopP, MinP) returns, within 1e-5.

One documented difference: transformers' TopPLogitsWarper removes tokens whose ascending cumulative mass is <= 1 - p,
while nanollm keeps every token at least as probable as the one whose descending cumulative mass crosses p (the GPU
kernel's rule). The two select the same set unless a cumulative sum lands on the boundary within rounding, or tokens
tie exactly at the threshold; the parity test draws settings with hypothesis and `assume`s every row is at least 1e-4
away from such a boundary (and likewise for min-p's threshold), so it compares only cases where the rules agree.
"""
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from transformers import (LogitsProcessorList, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from nanollm.logits_processors import (TokenHistory, apply_presence_frequency, apply_repetition_penalty,
                                       choose_tokens, explain_choice, process_logits)
from nanollm.backends import NumpyBackend
from nanollm.request import SamplingParams, whole_number
from nanollm.sampling import draw, filtered_probs, min_p_filter, sample_token, top_k_filter, top_p_filter
from tests.generation_fixtures import build

ROWS = 12  # next-token rows per architecture: prefixes of one random sequence



@pytest.fixture(scope="module")
def model_logits(tmp_path_factory):
    """{arch: (ids (ROWS, T) prefix matrix, logits (ROWS, V))}: the logits after each prefix of a random sequence."""
    out = {}
    for arch in ("gpt2", "llama"):
        model, _ = build(tmp_path_factory.mktemp(arch), arch=arch, n_kv_head=2 if arch == "llama" else 4,
                         vocab_size=113, seed=7)
        seq = np.random.default_rng(3).integers(0, 113, 40)
        logits = model.forward(seq[None])[0]  # (40, V)
        ends = np.linspace(8, 39, ROWS).astype(int)
        out[arch] = ([seq[: e + 1].tolist() for e in ends], logits[ends] * 2.0)  # x2: spread like a trained model
    return out


def transformers_distribution(prompts, logits, p: SamplingParams) -> np.ndarray:
    processors = LogitsProcessorList()
    if p.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    processors.append(TemperatureLogitsWarper(p.temperature))
    if p.top_k > 0:
        processors.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        processors.append(TopPLogitsWarper(p.top_p))
    if p.min_p > 0.0:
        processors.append(MinPLogitsWarper(p.min_p))
    rows = []
    for ids, row in zip(prompts, logits):  # one row at a time: the prompts have different lengths
        scores = processors(torch.tensor([ids]), torch.from_numpy(row[None].copy()))
        rows.append(torch.softmax(scores, dim=-1)[0].numpy())
    return np.stack(rows)


def away_from_boundaries(logits, p: SamplingParams) -> bool:
    """True when no top-p cumulative sum or min-p ratio is within 1e-4 of its threshold (see module docstring)."""
    for row in logits:
        probs = filtered_probs(row, p.temperature, p.top_k)  # after temperature and top-k, before top-p
        probs = probs / probs.sum()
        cumulative = np.cumsum(np.sort(probs)[::-1])
        if p.top_p < 1.0 and np.abs(cumulative - p.top_p).min() < 1e-4:
            return False
        kept = top_p_filter(probs, p.top_p)
        if p.min_p > 0.0 and np.abs(kept[kept > 0] / kept.max() - p.min_p).min() < 1e-4:
            return False
    return True


@settings(max_examples=40)
@given(arch=st.sampled_from(["gpt2", "llama"]), temperature=st.sampled_from([0.3, 0.7, 1.0, 1.6]),
       top_k=st.sampled_from([0, 1, 3, 20]), top_p=st.sampled_from([1.0, 0.95, 0.8, 0.5]),
       min_p=st.sampled_from([0.0, 0.02, 0.1, 0.3]), repetition_penalty=st.sampled_from([1.0, 1.3, 0.8]))
def test_processed_distribution_equals_transformers(model_logits, arch, temperature, top_k, top_p, min_p,
                                                    repetition_penalty):
    prompts, logits = model_logits[arch]
    p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                       repetition_penalty=repetition_penalty)
    ours = process_logits(logits, p, TokenHistory(prompts, logits.shape[1]))
    assume(away_from_boundaries(ours, p))
    ours = np.stack([explain_choice(1, row, row, p, 0.5, 0).final for row in ours])  # what --show-probs shows
    ours = ours / ours.sum(axis=1, keepdims=True)
    theirs = transformers_distribution(prompts, logits, p)
    assert np.abs(ours - theirs).max() <= 1e-5, np.abs(ours - theirs).max()
    assert ((ours > 0) == (theirs > 0)).all()  # the same tokens survive


# -- invariants ----------------------------------------------------------------------------------------------------

finite_logits = arrays(np.float32, st.integers(2, 60), elements=st.floats(-30, 30, width=32))


@given(logits=finite_logits)
def test_greedy_is_argmax(logits):
    expected = int(np.argmax(logits))
    assert sample_token(logits, 0.5, temperature=0) == expected
    assert choose_tokens(logits[None], SamplingParams(temperature=0), np.zeros(1), NumpyBackend())[0] == expected


@given(logits=finite_logits, top_p=st.floats(1e-6, 1.0), min_p=st.floats(0.0, 1.0), top_k=st.integers(0, 70),
       temperature=st.floats(0.05, 5.0))
def test_filters_never_remove_every_token(logits, top_p, min_p, top_k, temperature):
    """top-k, top-p and min-p all keep the most probable token, so something is always left to draw."""
    probs = filtered_probs(logits, temperature, top_k, top_p, min_p)
    assert probs.sum() > 0
    assert probs[np.argmax(logits)] > 0


@given(logits=finite_logits, u=st.floats(0.0, 1.0, exclude_max=True), top_p=st.floats(0.05, 1.0),
       min_p=st.floats(0.0, 0.5), top_k=st.integers(0, 10))
def test_a_token_of_probability_zero_is_never_drawn(logits, u, top_p, min_p, top_k):
    probs = filtered_probs(logits, 1.0, top_k, top_p, min_p)
    assert probs[draw(probs, u)] > 0


@given(probs=arrays(np.float32, st.integers(1, 40), elements=st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, 3.0])),
       u=st.floats(0.0, 1.0, exclude_max=True))
def test_draw_skips_zeros(probs, u):
    assume(probs.sum() > 0)
    assert probs[draw(probs, u)] > 0


# Logits away from the subnormal range, where x / penalty can round back to x (1e-45 / 1.5 == 1e-45 in float32).
normal_logits = arrays(np.float32, 30, elements=st.floats(-10, 10, width=32).filter(lambda x: x == 0 or abs(x) > 1e-6))


@given(logits=normal_logits, penalty=st.floats(1.01, 5.0), seen=arrays(bool, 30))
def test_repetition_penalty_lowers_every_seen_logit(logits, penalty, seen):
    """Positive logits are divided, negative multiplied: both move down; unseen tokens do not move."""
    out = apply_repetition_penalty(logits[None], seen[None], penalty)[0]
    assert (out[seen & (logits != 0)] < logits[seen & (logits != 0)]).all()
    assert (out[~seen] == logits[~seen]).all()
    assert (np.sign(out) == np.sign(logits)).all()  # never flips a sign


@given(logits=arrays(np.float32, 30, elements=st.floats(-10, 10, width=32)),
       counts=arrays(np.int32, 30, elements=st.integers(0, 4)), presence=st.floats(0.01, 2.0),
       frequency=st.floats(0.01, 2.0))
def test_presence_and_frequency_penalties_lower_generated_tokens(logits, counts, presence, frequency):
    out = apply_presence_frequency(logits[None], counts[None], presence, frequency)[0]
    generated = counts > 0
    assert (out[generated] < logits[generated]).all()
    assert (out[~generated] == logits[~generated]).all()
    np.testing.assert_allclose(out[generated], logits[generated] - presence - frequency * counts[generated],
                               rtol=1e-6, atol=1e-5)


def test_hand_derived_examples():
    """The docstring examples, worked by hand.

    top-k 2 of [1, 3, 3, 2]: the 2nd largest is 3, both 3s kept. top-p 0.7 of [.1, .5, .3, .1]: .5 (0.5 < 0.7),
    then .3 (0.8 >= 0.7) crosses, so tokens >= .3 stay. min-p 0.2 of [.5, .3, .15, .05]: threshold .1, .05 goes.
    draw([.2, 0, .8], u=.2): cumulative [.2, .2, 1.0], the first > .2 is index 2. Repetition penalty 2 on seen
    logits [4, -4]: 4/2 = 2, -4*2 = -8. Presence 1 + frequency .5 on a token generated twice: 3 - 1 - 1 = 1.
    """
    inf = -np.inf
    assert top_k_filter(np.array([1, 3, 3, 2], np.float32), 2).tolist() == [inf, 3, 3, inf]
    assert top_p_filter(np.array([.1, .5, .3, .1], np.float32), 0.7).tolist() == pytest.approx([0, .5, .3, 0])
    assert min_p_filter(np.array([.5, .3, .15, .05], np.float32), 0.2).tolist() == pytest.approx([.5, .3, .15, 0])
    assert draw(np.array([.2, 0, .8]), 0.2) == 2 and draw(np.array([.2, 0, .8]), 0.1) == 0
    seen = np.array([[True, True, False]])
    assert apply_repetition_penalty(np.array([[4, -4, 1]], np.float32), seen, 2.0).tolist() == [[2, -8, 1]]
    assert apply_presence_frequency(np.array([[3.0, 3.0]], np.float32), np.array([[2, 0]]), 1.0, 0.5).tolist() \
        == [[1.0, 3.0]]
    history = TokenHistory([[0]], 3)
    history.add(np.array([2]))
    p = SamplingParams(temperature=0, logit_bias={1: 10.0}, repetition_penalty=2.0, frequency_penalty=1.0)
    # bias: [1, 1, 1] -> [1, 11, 1]; repetition (0 and 2 seen): [0.5, 11, 0.5]; frequency (2 generated once): -1
    assert process_logits(np.ones((1, 3), np.float32), p, history).tolist() == [[0.5, 11, -0.5]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(min_p=-0.1), "min_p"), (dict(min_p=1.5), "min_p"), (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(presence_penalty=float("inf")), "presence_penalty"), (dict(logit_bias={-1: 1.0}), "logit_bias"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_whole_number_takes_ints_of_any_size():
    """float(10**400) is an OverflowError; an int is a whole number without converting it."""
    assert whole_number("top_k", 10**400) == 10**400 and whole_number("top_k", np.int64(3)) == 3
    with pytest.raises(ValueError, match="top_k must be a whole number >= 0, got -"):
        whole_number("top_k", -10**400)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_nan_logits_raise(temperature):
    logits = np.array([[0.1, np.nan, 0.3]], np.float32)
    with pytest.raises(ValueError, match="NaN"):
        choose_tokens(logits, SamplingParams(temperature=temperature), np.full(1, 0.5), NumpyBackend())
    with pytest.raises(ValueError, match="NaN"):  # the kernel's twin checks too, whatever the temperature
        sample_token(logits[0], 0.5, temperature=temperature)


@pytest.mark.parametrize("temperature, logits", [
    (1e-45, [0.0, 2.0, -1.0, 2.0, 0.5]),  # 1 / T = 1e45 overflows float32: z = [NaN, inf, -inf, inf, inf]
    (1e-38, [0.0, 5.0, -1.0, 5.0, 0.5]),  # 1 / T = 1e38 fits, but 5 / T = 5e38 does not: z max = +inf
    (1e-38, [-9.0, -5.0, -7.0, -5.0, -6.0]),  # every z is -inf, softmax would be all NaN
])
def test_a_temperature_too_small_for_float32_is_greedy(temperature, logits):
    """softmax(z / T) -> argmax as T -> 0. Where z / T overflows float32 the T -> 0 limit is all that can be
    computed, so the token is the first largest logit (index 1, tied with 3) for every u, not the last id (4) that
    a NaN row used to draw."""
    logits = np.array(logits, np.float32)
    for u in (0.0, 0.3, 0.99):
        assert sample_token(logits, u, temperature=temperature, top_k=2, top_p=0.9) == 1
    assert filtered_probs(logits, temperature, 2, 0.9, 0.1).tolist() == [0, 1, 0, 0, 0]
    p = SamplingParams(temperature=temperature, top_k=2)
    assert choose_tokens(np.stack([logits, logits[::-1]]), p, np.array([0.2, 0.9]), NumpyBackend()).tolist() == [1, 1]
