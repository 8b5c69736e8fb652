"""GPT2Config(vocab_size=N) checkpoints, exactly as transformers writes them, load and generate as transformers does.

Every GPT2Config(vocab_size=N) keeps bos_token_id = eos_token_id = 50256, and save_pretrained writes them into both
config.json and generation_config.json, so for N <= 50256 the files name an end-of-sequence token that does not
exist. transformers loads such files and simply never meets that id; nanollm used to refuse them at generate time
("eos_token_id in generation_config.json names token 50256, outside the vocabulary"). Now it warns once per file at
load and ignores the id, and the ids it generates, greedy and beam search, equal transformers' own generate.
"""
import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nanollm
from tests.hf_models import Options, build_checkpoint

GPT2_DEFAULT_ID = 50256  # GPT2Config's bos_token_id and eos_token_id, whatever vocab_size is
PAD = 0  # transformers needs some pad_token_id; with an all-ones attention mask it never matters


@st.composite
def small_vocab_checkpoints(draw):
    return Options(arch="gpt2", vocab_size=draw(st.sampled_from([300, 301, 97])), n_layer=draw(st.integers(1, 2)),
                   n_head=draw(st.sampled_from([1, 2, 4])), head_dim=draw(st.sampled_from([4, 8])), n_positions=64,
                   tied=draw(st.booleans()), seed=draw(st.integers(0, 2**16)), class_special_ids=True)


def transformers_generate(reference, prompt, max_new_tokens, num_beams=1):
    """transformers' greedy (num_beams=1) or beam search ids, with no EOS, and each beam's score for beams."""
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams,
                                 num_return_sequences=num_beams, eos_token_id=None, pad_token_id=PAD,
                                 return_dict_in_generate=True, output_scores=True)
    ids = [row[len(prompt):] for row in out.sequences.tolist()]
    return ids, (out.sequences_scores.tolist() if num_beams > 1 else None)


@settings(max_examples=12)
@given(options=small_vocab_checkpoints(), with_generation_config=st.booleans(), num_beams=st.integers(2, 4),
       prompt_seed=st.integers(0, 2**16))
def test_transformers_default_special_ids_load_and_generate_as_transformers(tmp_path_factory, options,
                                                                           with_generation_config, num_beams,
                                                                           prompt_seed):
    directory, reference = build_checkpoint(tmp_path_factory.mktemp("gpt2"), options)
    files = ["config.json"] + (["generation_config.json"] if with_generation_config else [])
    if not with_generation_config:
        (directory / "generation_config.json").unlink()
    for name in files:  # the regression's premise: transformers wrote the impossible id into the files
        assert json.loads((directory / name).read_text(encoding="utf-8"))["eos_token_id"] == GPT2_DEFAULT_ID

    with pytest.warns(UserWarning) as caught:
        model = nanollm.load(directory)
    messages = [str(w.message) for w in caught]
    assert [m.split(": ignoring ")[0] for m in messages] == [str(directory / name) for name in files]  # once a file
    for m in messages:
        assert f"eos_token_id {GPT2_DEFAULT_ID}" in m and f"vocabulary of {options.vocab_size} tokens" in m
    assert model.config.eos_token_ids == () and model.config.bos_token_id is None

    prompt = np.random.default_rng(prompt_seed).integers(0, options.vocab_size, 5).tolist()
    (theirs,), _ = transformers_generate(reference, prompt, max_new_tokens=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning was given at load; generate adds none
        as_files_say = model.generate(prompt, max_new_tokens=16, temperature=0)  # EOS 50256: never met
    without_eos = model.generate(prompt, max_new_tokens=16, temperature=0, eos_token_ids=[])
    assert as_files_say.token_ids == without_eos.token_ids == theirs

    theirs, scores = transformers_generate(reference, prompt, max_new_tokens=8, num_beams=num_beams)
    ours = model.generate(prompt, max_new_tokens=8, temperature=0, num_beams=num_beams, eos_token_ids=[],
                          return_beams=True)
    assert [b.token_ids for b in ours.beams] == theirs and ours.token_ids == theirs[0]
    assert [b.score for b in ours.beams] == pytest.approx(scores, abs=1e-4)
    assert model.generate(prompt, max_new_tokens=8, temperature=0, num_beams=num_beams).token_ids == theirs[0]


def test_user_eos_ids_outside_the_vocabulary_stay_errors(tmp_path):
    """What the files say is forgiven; what the caller passes is not: it is a mistake in the caller's own code."""
    directory, _ = build_checkpoint(tmp_path, Options(arch="gpt2", vocab_size=300, class_special_ids=True))
    with pytest.warns(UserWarning):
        model = nanollm.load(directory)
    with pytest.raises(ValueError, match="the eos_token_ids argument names token 50256, outside the vocabulary of 300"):
        model.generate([1, 2], max_new_tokens=2, eos_token_ids=[GPT2_DEFAULT_ID])
    with pytest.raises(ValueError, match="logit_bias names token 50256, outside the vocabulary of 300"):
        model.generate([1, 2], max_new_tokens=2, logit_bias={GPT2_DEFAULT_ID: -100.0})
