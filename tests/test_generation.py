"""The generation loop: batching, stopping, streaming, context limits, seeds and the numbers it reports.

References: nanollm's own single-prompt greedy run (itself equal to transformers' greedy ids, tests/test_model_parity),
transformers' `generate` for penalties and min_new_tokens, and the real GPT-2 tokenizer for text.
"""
import json
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nanollm
from nanollm.generation import iter_generate
from nanollm.sampling import apply_temperature, draw, filtered_probs, softmax, top_k_filter, top_p_filter
from nanollm.kv_cache import kv_cache_bytes
from nanollm.stopping import TextStream, held_back_length
from tests.generation_fixtures import build, gpt2_text_model
from tests.hf_models import Options, build_checkpoint



@pytest.fixture(scope="module", params=["gpt2", "llama"])
def models(request, tmp_path_factory):
    arch = request.param
    return build(tmp_path_factory.mktemp(arch), arch=arch, n_kv_head=2 if arch == "llama" else 4, seed=5)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return gpt2_text_model(tmp_path_factory.mktemp("gpt2text"))


PROMPT_LENGTHS = (3, 11, 7, 1)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_greedy_equals_each_prompt_alone(models, padding_side):
    """Each sequence of a padded batch gets exactly the ids it gets alone, including where it stops on its own:
    the EOS id is set to a token the first prompt produces early, so sequences finish at different steps."""
    model, _ = models
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 97, n).tolist() for n in PROMPT_LENGTHS]
    eos = {model.generate(prompts[0], max_new_tokens=6, temperature=0).token_ids[4]}
    alone = [model.generate(p, max_new_tokens=24, temperature=0, eos_token_ids=eos) for p in prompts]
    batch = model.generate(prompts, max_new_tokens=24, temperature=0, eos_token_ids=eos, padding_side=padding_side)
    assert [r.token_ids for r in batch] == [r.token_ids for r in alone]
    assert [r.finish_reason for r in batch] == [r.finish_reason for r in alone]
    assert {r.finish_reason for r in batch} == {"eos", "length"}  # some stopped early, some ran to the limit


def test_penalties_and_min_new_tokens_equal_transformers(models):
    """Greedy with repetition_penalty and min_new_tokens gives transformers' ids. The EOS id is the token greedy
    would pick second, so suppressing it until min_new_tokens changes the output."""
    model, reference = models
    prompt = [5, 17, 42, 8, 5, 17]
    eos = model.generate(prompt, max_new_tokens=3, temperature=0, repetition_penalty=1.5).token_ids[1]
    ours = model.generate(prompt, max_new_tokens=20, temperature=0, repetition_penalty=1.5, min_new_tokens=6,
                          eos_token_ids={eos})
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=20, do_sample=False, repetition_penalty=1.5, min_new_tokens=6,
                                 eos_token_id=eos, pad_token_id=eos)
    assert ours.token_ids == out[0, len(prompt):].tolist()
    assert eos not in ours.token_ids[:6]


@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1))
def test_same_seed_same_tokens(models, seed):
    model, _ = models
    kwargs = dict(max_new_tokens=12, temperature=1.3, top_k=30, top_p=0.95, min_p=0.01, presence_penalty=0.4,
                  seed=seed)
    first = model.generate([4, 9, 33], **kwargs)
    assert model.generate([4, 9, 33], **kwargs).token_ids == first.token_ids
    # the batch path draws one uniform per row per step from the same generator: a batch of one is the same run
    assert model.generate([[4, 9, 33]], **kwargs)[0].token_ids == first.token_ids


def test_context_overflow_errors_or_keeps_the_most_recent_window(models):
    model, _ = models
    context = model.config.max_seq_len  # 160
    prompt = np.random.default_rng(1).integers(3, 97, context - 5).tolist()
    with pytest.raises(ValueError, match="exceeds the model's context of 160"):
        model.generate(prompt, max_new_tokens=10, temperature=0)
    kept = model.generate(prompt, max_new_tokens=10, temperature=0, context_overflow="truncate_left")
    assert kept.prompt_ids == prompt[-(context - 10):]
    assert kept.token_ids == model.generate(prompt[-(context - 10):], max_new_tokens=10, temperature=0).token_ids
    with pytest.raises(ValueError, match="context_overflow"):
        model.generate(prompt, max_new_tokens=10, context_overflow="wrap")


def test_max_new_tokens_beyond_the_context_is_named_with_the_numbers_that_matter(models):
    """It used to say "keeps the most recent -999999840 tokens": a window that cannot exist."""
    model, _ = models
    for overflow in ("error", "truncate_left"):
        with pytest.raises(ValueError) as e:
            model.generate([3, 4], max_new_tokens=10**9, context_overflow=overflow)
        assert str(e.value) == ("max_new_tokens=1000000000 leaves no room for a prompt in the model's context of 160 "
                                "tokens (at most 159 new tokens)")


def test_stats_report_the_run(models):
    model, _ = models
    r = model.generate([3, 4, 5, 6], max_new_tokens=16, temperature=0, eos_token_ids=set())
    s = r.stats
    assert (s.prompt_tokens, s.new_tokens, s.batch_size) == (4, 16, 1)
    assert s.kv_cache_bytes == kv_cache_bytes(model.config, 1, 4 + 16)
    assert 0 < s.tpot_p50_s <= s.tpot_p90_s and s.ttft_s > 0 and s.peak_memory_bytes > 2**20
    assert s.tokens_per_s == pytest.approx(1 / s.tpot_s) and s.prefill_tokens_per_s == pytest.approx(4 / s.ttft_s)


def test_on_choice_reports_every_stage_as_the_loop_computed_it(models):
    """Each stage of a reported choice is the output of the loop's own function on the previous stage, and the
    token it marks is the token generated (greedy: the argmax; sampling: the draw of its u from its distribution)."""
    model, _ = models
    seen = []
    r = model.generate([7, 8, 9], max_new_tokens=5, temperature=0, on_choice=lambda row, c: seen.append(c))
    assert [c.token for c in seen] == r.token_ids == [int(np.argmax(c.processed)) for c in seen]
    assert [c.step for c in seen] == [1, 2, 3, 4, 5] and all(c.u is None for c in seen)
    seen.clear()
    options = dict(temperature=0.9, top_k=6, top_p=0.8, min_p=0.05, repetition_penalty=1.3, logit_bias={5: 2.0})
    r = model.generate([7, 8, 9], max_new_tokens=6, seed=1, on_choice=lambda row, c: seen.append(c), **options)
    assert [c.token for c in seen] == r.token_ids
    for c in seen:
        p = c.params
        assert c.processed[5] != c.raw[5]  # the bias (and maybe the penalty) acted
        assert np.array_equal(c.scaled, apply_temperature(c.processed, p.temperature))
        assert np.array_equal(c.after_top_k, top_k_filter(c.scaled, p.top_k))
        assert np.array_equal(c.probs, softmax(c.after_top_k))
        assert np.array_equal(c.after_top_p, top_p_filter(c.probs, p.top_p))
        assert np.array_equal(c.final, filtered_probs(c.processed, p.temperature, p.top_k, p.top_p, p.min_p))
        assert draw(c.final, c.u) == c.token and c.final[c.token] > 0
        assert np.isfinite(c.after_top_k).sum() == 6 and set(c.cut("top_k")) == set(np.flatnonzero(
            ~np.isfinite(c.after_top_k)))
        assert c.after_top_p[c.top_p_crossing] > 0  # the token that crosses p is kept, as transformers keeps it


def test_an_unknown_option_is_a_type_error_naming_it(models):
    with pytest.raises(TypeError, match="unknown options \\['show_probs'\\]"):
        models[0].generate([3, 4], show_probs=3)


def test_without_the_kv_cache_the_tokens_are_the_same(models):
    """kv_cache=False recomputes every position at every step: the same tokens, greedy or seeded sampling, one
    prompt or a padded batch; only the time grows."""
    model, _ = models
    for options in (dict(temperature=0), dict(temperature=0.8, top_p=0.9, seed=3)):
        for prompt in ([5, 6, 7], [[5, 6, 7, 8], [9, 1]]):
            cached = model.generate(prompt, max_new_tokens=10, eos_token_ids=[], **options)
            recomputed = model.generate(prompt, max_new_tokens=10, eos_token_ids=[], kv_cache=False, **options)
            if isinstance(cached, list):
                assert [r.token_ids for r in cached] == [r.token_ids for r in recomputed]
            else:
                assert cached.token_ids == recomputed.token_ids
    with pytest.raises(ValueError, match="beam search always keeps its KV cache"):
        model.generate([5, 6], max_new_tokens=2, num_beams=2, kv_cache=False)


def test_iter_generate_yields_the_ids_and_fills_stats(models):
    model, _ = models
    stats = nanollm.request.GenerationStats(prompt_tokens=0)
    ids = list(iter_generate(model, [3, 4], 9, 0, stats=stats, eos_token_ids=set()))
    assert ids == model.generate([3, 4], max_new_tokens=9, temperature=0, eos_token_ids=set()).token_ids
    assert stats.new_tokens == 9 and stats.prompt_tokens == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=-1), "max_new_tokens"), (dict(min_new_tokens=1.5), "min_new_tokens"),
    (dict(padding_side="middle"), "padding_side"), (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(stop=("x",)), "tokenizer"), (dict(temperature=-1), "temperature"), (dict(stream=True), "tokenizer"),
    (dict(temperature=0.7, top_k=2.5), "top_k"), (dict(max_new_tokens=float("inf")), "max_new_tokens"),
    (dict(max_new_tokens="3"), "max_new_tokens"), (dict(seed=-1), "seed"), (dict(num_beams=True), "num_beams"),
    (dict(kv_cache="no"), "kv_cache"), (dict(early_stopping=1), "early_stopping"),
    (dict(num_beams=2, length_penalty=float("nan")), "length_penalty"), (dict(stop=("a", "")), "must not be empty"),
])
def test_invalid_requests_raise(models, kwargs, message):
    model, _ = models
    with pytest.raises(ValueError, match=message):
        model.generate([3, 4], **kwargs)


@pytest.mark.parametrize("eos", [[5000], [-24], 97, [2, 1.0]])
def test_eos_ids_outside_the_vocabulary_are_refused(models, eos):
    """The vocabulary is 0 .. 96. 5000 and 97 used to raise IndexError mid-run (with min_new_tokens); -24 silently
    banned token 97 - 24 = 73 by NumPy's negative indexing; 1.0 is not a token id."""
    model, _ = models
    with pytest.raises(ValueError, match=r"eos_token_ids argument names token .* vocabulary of 97"):
        model.generate([3, 4], max_new_tokens=3, min_new_tokens=2, eos_token_ids=eos)


@pytest.mark.parametrize("config_file", ["generation_config.json", "config.json"])
def test_eos_ids_from_the_model_files_outside_the_vocabulary_are_ignored_with_one_warning(tmp_path, config_file):
    """eos_token_id 99999 in a vocabulary of 97, as transformers loads it: one warning at load naming the file, the
    key and the id, then generation as if the file named no EOS (no token can ever be 99999), with no warning per
    run. generation_config.json wins over config.json (as in transformers), so for config.json it is left without
    one. min_new_tokens=1 used to index the logits with the id (IndexError)."""
    build_checkpoint(tmp_path, Options(arch="gpt2", seed=3))
    generation_config = json.loads((tmp_path / "generation_config.json").read_text(encoding="utf-8"))
    generation_config.pop("eos_token_id", None)
    generation_config["min_new_tokens"] = 1
    (tmp_path / "generation_config.json").write_text(json.dumps(generation_config), encoding="utf-8")
    edited = json.loads((tmp_path / config_file).read_text(encoding="utf-8"))
    edited["eos_token_id"] = 99999
    (tmp_path / config_file).write_text(json.dumps(edited), encoding="utf-8")
    with pytest.warns(UserWarning) as caught:
        model = nanollm.load(tmp_path)
    assert [str(w.message).split(": ignoring ")[0] for w in caught] == [str(tmp_path / config_file)]
    assert "eos_token_id 99999: outside the vocabulary of 97 tokens" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing more at generate time
        result = model.generate([3, 4], max_new_tokens=12, temperature=0)
    assert result.token_ids == model.generate([3, 4], max_new_tokens=12, temperature=0, eos_token_ids=[]).token_ids
    assert len(result.token_ids) == 12 and result.finish_reason == "length"


@pytest.mark.parametrize("prompt, outline", [
    ([1.0, 2.0], "list[float]"), (3, "int"), ([[1, 2], [1.5]], "list[list[float] | list[int]]"),
    ([True, False], "list[bool]"), ({"text": "Hi"}, "dict"),
])
def test_a_prompt_of_the_wrong_type_is_a_type_error_showing_what_was_given(models, prompt, outline):
    """[1.0, 2.0] used to be taken for a batch of two prompts and fail with "'float' object is not iterable"."""
    model, _ = models
    with pytest.raises(TypeError, match="a prompt is a str or a list of int token ids.*got " + re.escape(outline)):
        model.generate(prompt, max_new_tokens=2)
    with pytest.raises(TypeError, match="iter_generate takes one prompt"):
        next(iter_generate(model, [[3, 4]], 2))


def test_prompt_ids_as_a_tuple_or_an_array_are_one_prompt(models):
    model, _ = models
    expected = model.generate([3, 4, 5], max_new_tokens=4, temperature=0).token_ids
    assert model.generate((3, 4, 5), max_new_tokens=4, temperature=0).token_ids == expected
    assert model.generate(np.array([3, 4, 5]), max_new_tokens=4, temperature=0).token_ids == expected
    batch = model.generate([(3, 4, 5), np.array([3, 4, 5])], max_new_tokens=4, temperature=0)
    assert [r.token_ids for r in batch] == [expected, expected]


def test_whole_numbers_written_as_floats_are_counts(models):
    """max_new_tokens=2.0 (as a JSON config may write it) means 2; top_k=3.0 means 3: the same run as with ints."""
    model, _ = models
    kwargs = dict(temperature=0.9, seed=3, eos_token_ids=set())
    floats = model.generate([3, 4], max_new_tokens=2.0, min_new_tokens=1.0, top_k=3.0, **kwargs)
    ints = model.generate([3, 4], max_new_tokens=2, min_new_tokens=1, top_k=3, **kwargs)
    assert floats.token_ids == ints.token_ids and len(floats.token_ids) == 2


# -- text: streaming and stop strings ------------------------------------------------------------------------------

def test_streamed_text_equals_final_text(text_model):
    """Pieces arrive as tokens do, UTF-8 safe (random tokens include partial characters), and join to .text."""
    stream = text_model.generate("The meaning of life is", max_new_tokens=40, temperature=1.0, seed=4, stream=True,
                                 eos_token_ids=set())
    pieces = list(stream)
    assert all(isinstance(p, str) and p for p in pieces) and len(pieces) > 5
    r = stream.result
    assert "".join(pieces) == r.text == text_model.tokenizer.decode(r.token_ids)
    again = text_model.generate("The meaning of life is", max_new_tokens=40, temperature=1.0, seed=4,
                                eos_token_ids=set())
    assert again.text == r.text  # the same seed gives the same text


@pytest.mark.parametrize("at", [3, 9, 17])
def test_a_stop_string_spanning_tokens_stops_and_is_never_streamed(text_model, at):
    """The stop string is the last 2 characters of token `at` and the first 2 of token `at`+1 of a free run, so it
    only exists once both tokens are out. The stream must hold the first half back, then drop it."""
    tok = text_model.tokenizer
    kwargs = dict(max_new_tokens=30, temperature=0, eos_token_ids=set())
    free = text_model.generate("Once upon a time", **kwargs)
    texts = [tok.decode([t]) for t in free.token_ids]
    i = next(i for i in range(at, 28) if len(texts[i]) >= 2 and len(texts[i + 1]) >= 2 and "\ufffd" not in
             texts[i] + texts[i + 1])
    stop = texts[i][-2:] + texts[i + 1][:2]
    stream = text_model.generate("Once upon a time", stream=True, stop=stop, **kwargs)
    pieces = list(stream)
    r = stream.result
    expected = free.text[: free.text.find(stop)]
    assert "".join(pieces) == r.text == expected
    assert stop not in r.text and not any(stop in p for p in pieces)
    assert r.finish_reason == "stop" and r.token_ids == free.token_ids[: len(r.token_ids)]
    assert len(r.token_ids) <= i + 2  # stopped no later than the token completing the stop string


def test_batch_stream_yields_indexed_pieces(text_model):
    prompts = ["Hello", "A much longer prompt than the first one"]
    stream = text_model.generate(prompts, max_new_tokens=8, temperature=0, stream=True, eos_token_ids=set())
    joined = {0: "", 1: ""}
    for index, piece in stream:
        joined[index] += piece
    assert [joined[0], joined[1]] == [r.text for r in stream.results]
    assert [r.token_ids for r in stream.results] == \
        [text_model.generate(p, max_new_tokens=8, temperature=0, eos_token_ids=set()).token_ids for p in prompts]


class PieceDecoder:
    """A stand-in stream decoder whose "token" is the text piece itself."""

    def push(self, piece):
        return piece

    def flush(self):
        return ""


@settings(max_examples=200)
@given(text=st.text(alphabet="abc\n:", max_size=40), cuts=st.lists(st.integers(0, 40), max_size=10),
       stops=st.lists(st.text(alphabet="abc\n:", min_size=1, max_size=4), min_size=1, max_size=3))
def test_text_stream_cuts_at_the_first_stop_string(text, cuts, stops):
    """However the text is split into pieces, the output is the text up to the earliest stop string present once the
    first stop string is complete (generation ends there: text="a::", stops=(":", "a::"), pieces "a:", ":" gives "a",
    since "a::" never gets its last character), and no stop string ever appears in what was released."""
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    stream = TextStream(PieceDecoder(), stops)
    out = ""
    for piece in pieces:
        out += stream.push(piece)
        assert not any(s in out for s in stops)
        if stream.stopped:
            break
    out += stream.finish()
    expected, hits, seen = text, [], ""
    for piece in pieces:  # the reference: the whole text so far, searched after each piece
        seen += piece
        hits = [seen.find(s) for s in stops if s in seen]
        if hits:
            expected = seen[: min(hits)]
            break
    assert out == expected
    assert stream.stopped == bool(hits)


def test_held_back_length_examples():
    """"Hello Us" may still become "User:", so "Us" waits; "Hello" cannot, so nothing waits."""
    assert held_back_length("Hello Us", ("User:",)) == 2
    assert held_back_length("Hello", ("User:",)) == 0
    assert held_back_length("ab", ("abc", "b")) == 2


def test_logit_bias_ids_outside_the_vocabulary_are_refused_before_generating(models):
    """Checked once with the other token ids, not on every step: a NumPy index of -1 or V would otherwise mean
    token V-1 or crash mid-run."""
    model, _ = models
    V = model.config.vocab_size
    for bad in (V, V + 100):
        with pytest.raises(ValueError, match=f"logit_bias names token {bad}, outside the vocabulary of {V} tokens"):
            model.generate([3, 4], max_new_tokens=2, temperature=0, logit_bias={bad: 1.0})
