"""Beam search against transformers' `generate(num_beams=...)` on random-weight checkpoints.

The vocabulary is small (12 tokens, EOS = 2) so that beams often end in EOS early: the finishing, length-penalty and
early-stopping rules are all exercised, not just "run to max_new_tokens". Every returned beam (ids and score) is
compared, not only the best. transformers is given an explicit all-ones attention mask and a pad_token_id (it would
otherwise guess padding from the prompt). Its returned beams share one padded length; `beam_indices` (-1 past a
beam's end) gives each beam's true length.
"""
import numpy as np
import pytest
import torch

from tests.generation_fixtures import build

PAD = 0
MAX_NEW = 10



@pytest.fixture(scope="module", params=["gpt2", "llama"])
def models(request, tmp_path_factory):
    arch = request.param
    # Weight seeds chosen so that EOS wins some beams (checked by the assertion at the end of the parity test).
    return build(tmp_path_factory.mktemp(arch), arch=arch, vocab_size=12, n_kv_head=2 if arch == "llama" else 4,
                 seed={"gpt2": 0, "llama": 1}[arch])


def transformers_beams(reference, prompt, num_beams, length_penalty, early_stopping):
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=MAX_NEW, do_sample=False, num_beams=num_beams,
                                 num_return_sequences=num_beams, length_penalty=length_penalty,
                                 early_stopping=early_stopping, pad_token_id=PAD, return_dict_in_generate=True,
                                 output_scores=True)
    lengths = (out.beam_indices != -1).sum(dim=1).tolist()
    ids = [row[len(prompt) : len(prompt) + n] for row, n in zip(out.sequences.tolist(), lengths)]
    return ids, out.sequences_scores.tolist()


@pytest.mark.parametrize("length_penalty", [-1.0, 0.0, 1.0, 2.0])
@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_beams_equal_transformers(models, length_penalty, early_stopping):
    model, reference = models
    finished_by_eos = 0
    for seed, num_beams in [(0, 2), (1, 3), (2, 4)]:
        prompt = np.random.default_rng(seed).integers(3, 12, 5).tolist()
        ours = model.generate(prompt, max_new_tokens=MAX_NEW, temperature=0, num_beams=num_beams,
                              length_penalty=length_penalty, early_stopping=early_stopping, return_beams=True)
        ids, scores = transformers_beams(reference, prompt, num_beams, length_penalty, early_stopping)
        assert ours.token_ids == ids[0]  # the best beam, the returned result
        assert [b.token_ids for b in ours.beams] == ids
        for beam, their_score in zip(ours.beams, scores):
            assert beam.score == pytest.approx(their_score, abs=1e-4)
        finished_by_eos += sum(b.token_ids[-1] == 2 for b in ours.beams)
    if length_penalty <= 0:  # short sequences are not penalised: EOS-finished beams must reach the result
        assert finished_by_eos > 0  # the EOS path was exercised, not only max_new_tokens


def test_beams_are_sorted_and_scored_by_the_length_penalty(models):
    """A beam's score is its summed log-probability over its length ** length_penalty, recomputed here from a
    stateless forward pass over prompt + beam; beams come best first."""
    model, _ = models
    prompt = [5, 7, 3, 9]
    result = model.generate(prompt, max_new_tokens=6, temperature=0, num_beams=3, length_penalty=1.5,
                            return_beams=True)
    scores = [b.score for b in result.beams]
    assert scores == sorted(scores, reverse=True)
    for beam in result.beams:
        logits = model.forward([prompt + beam.token_ids])[0].astype(np.float64)  # (T, V)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        total = sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(beam.token_ids))
        assert beam.score == pytest.approx(total / len(beam.token_ids) ** 1.5, abs=1e-4)


def test_beam_search_refuses_sampling_and_streaming(models):
    model, _ = models
    with pytest.raises(ValueError, match="temperature=0"):
        model.generate([3, 4], max_new_tokens=3, temperature=0.7, num_beams=2)
    with pytest.raises(ValueError, match="stream"):
        model.generate([3, 4], max_new_tokens=3, temperature=0, num_beams=2, stream=True)


def test_beam_search_refuses_stop_strings_and_show_probs(models):
    """Both used to be ignored without a word: a result containing the stop string, a callback never called."""
    model, _ = models
    with pytest.raises(ValueError, match="beam search does not take stop strings"):
        model.generate([3, 4], max_new_tokens=3, temperature=0, num_beams=2, stop="x")
    seen = []
    with pytest.raises(ValueError, match="on_choice"):
        model.generate([3, 4], max_new_tokens=3, temperature=0, num_beams=2,
                       on_choice=lambda row, choice: seen.append(choice))
    assert seen == []


def test_beam_search_reports_its_timing_like_the_main_loop(models):
    """The same stats fields as a greedy run (one shared helper): prompt and beam counts, time to the first step,
    per-step times whose p50 <= p90, throughput = 1 / mean step time, and the process's peak memory."""
    model, _ = models
    result = model.generate([5, 7, 3], max_new_tokens=6, temperature=0, num_beams=3, early_stopping="never",
                            eos_token_ids=set())
    s = result.stats
    assert (s.prompt_tokens, s.batch_size, s.new_tokens) == (3, 3, len(result.token_ids)) and s.new_tokens == 6
    assert s.ttft_s > 0 and 0 < s.tpot_p50_s <= s.tpot_p90_s and s.peak_memory_bytes > 2**20
    assert s.tokens_per_s == pytest.approx(1 / s.tpot_s) and s.prefill_tokens_per_s == pytest.approx(3 / s.ttft_s)


def test_beam_search_refuses_nan_logits(models, monkeypatch):
    """A NaN logit used to sort anywhere in argpartition and silently choose the beams; greedy and sampling raise,
    and so does beam search now. Token 5's embedding row is NaN, so every step's logit for token 5 is NaN."""
    model, _ = models
    poisoned = model.weights.tok_emb.copy()
    poisoned[5] = np.nan
    monkeypatch.setattr(model.weights, "tok_emb", poisoned)
    if model.weights.lm_head is not None:
        lm_head = model.weights.lm_head.copy()
        lm_head[:, 5] = np.nan
        monkeypatch.setattr(model.weights, "lm_head", lm_head)
    with pytest.raises(ValueError, match="NaN logits"):
        model.generate([3, 4], max_new_tokens=3, temperature=0)  # greedy, for comparison
    with pytest.raises(ValueError, match="NaN logits"):
        model.generate([3, 4], max_new_tokens=3, temperature=0, num_beams=2)


@pytest.mark.parametrize("length_penalty", [float("nan"), float("inf"), -float("inf")])
def test_beam_search_refuses_a_length_penalty_that_is_not_a_finite_number(models, length_penalty):
    model, _ = models
    with pytest.raises(ValueError, match=f"length_penalty must be a finite number .*got {length_penalty}"):
        model.generate([3, 4], max_new_tokens=3, temperature=0, num_beams=2, length_penalty=length_penalty)


def test_an_extreme_length_penalty_is_a_ranking_not_an_overflow_error(models):
    """(n + 1) ** 1e3 is an OverflowError in Python's float arithmetic; in float32 it is inf, every score 0, and
    the beams keep the order they were found in."""
    model, _ = models
    result = model.generate([3, 4], max_new_tokens=4, temperature=0, num_beams=2, length_penalty=1e3,
                            eos_token_ids=[], return_beams=True)
    assert len(result.beams) == 2 and all(b.score == 0 for b in result.beams)


def test_beam_search_keeps_no_more_candidates_than_exist(tmp_path):
    """A 2-token vocabulary whose tokens are both EOS: transformers' topk asks for 3 * num_beams of the
    2 * num_beams candidates and fails; here every beam ends at once in one of the two EOS tokens."""
    with pytest.warns(UserWarning, match="ignoring eos_token_id 2: outside the vocabulary of 2 tokens"):
        model, _ = build(tmp_path, arch="gpt2", vocab_size=2)  # the checkpoint's own EOS (2) does not exist
    result = model.generate([0, 1], max_new_tokens=4, temperature=0, num_beams=2, eos_token_ids=[0, 1],
                            return_beams=True)
    assert sorted(b.token_ids for b in result.beams) == [[0], [1]] and result.finish_reason == "eos"
