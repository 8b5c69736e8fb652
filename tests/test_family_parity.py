"""Every family against transformers, on checkpoints transformers wrote from the family's own config class.

For each family (tests/hf_families.py draws the configurations): logits over prompts longer than the sliding window
within 1e-4 * max(1, max |logit|) of transformers' float32 eager forward pass, and greedy generate equal to
transformers' greedy ids for 32 new tokens, on the NumPy backend and on the emulator of the CUDA kernels.
Float32 compute on both sides; the stored bfloat16 (float16) weights are read by both as the same float32 values.
The classic families (Pythia, GPT-J, Falcon, phi-2, StableLM-2) are checked with their config.json written either
way: as transformers 5 writes it, or with the released files' RoPE keys.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nanollm
from tests.hf_families import CLASSIC_FAMILIES, FAMILIES, RELEASED_ROPE_KEYS, STRATEGIES, build_family
from tests.test_model_parity import assert_logits_close

T = 24  # prompt length for the logits: past every window drawn (at most 9) and Phi-3's original context (16)
NEW_TOKENS = 32


def check_family(tmp_path_factory, family, config, seed, backend, released=False):
    directory, reference = build_family(tmp_path_factory.mktemp(family), family, config, seed, released)
    model = nanollm.load(directory, backend=backend)
    ids = np.random.default_rng(seed).integers(0, config["vocab_size"], (2, T))

    ours = model.forward(ids)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(ids)).logits.numpy()
    assert_logits_close(ours, theirs)

    prompt = ids[0, :6].tolist()  # generation crosses the window and Phi-3's 16-position switch to long factors
    result = model.generate(prompt, max_new_tokens=NEW_TOKENS, temperature=0)
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    assert result.token_ids == out[0, len(prompt):].tolist()


@pytest.mark.parametrize("family", FAMILIES + CLASSIC_FAMILIES)
@settings(max_examples=4)
@given(data=st.data(), seed=st.integers(0, 2**16), released=st.booleans())
def test_family_matches_transformers(tmp_path_factory, family, data, seed, released):
    check_family(tmp_path_factory, family, data.draw(STRATEGIES[family]()), seed, "numpy",
                 released and family in RELEASED_ROPE_KEYS)


@pytest.mark.parametrize("family", FAMILIES + CLASSIC_FAMILIES)
@settings(max_examples=3)
@given(data=st.data(), seed=st.integers(0, 2**16), released=st.booleans())
def test_family_on_the_emulated_kernels_matches_transformers(tmp_path_factory, family, data, seed, released):
    """The same on the CUDA kernels, run by the CPU emulator: three configurations per family (each kernel is tested
    against its NumPy twin on its own, with hypothesis, in tests/test_kernels.py)."""
    check_family(tmp_path_factory, family, data.draw(STRATEGIES[family]()), seed, "emulator",
                 released and family in RELEASED_ROPE_KEYS)


def test_a_batch_through_a_sliding_window_equals_each_prompt_alone(tmp_path):
    """Left padding shifts every slot of a row by the same amount, so a window over slots is a window over positions:
    a batch of prompts of different lengths decodes as each prompt alone. Right padding would not, and is refused."""
    config = dict(num_hidden_layers=2, num_key_value_heads=1, num_attention_heads=2, hidden_size=32,
                  intermediate_size=40, vocab_size=70, max_position_embeddings=128, head_dim=16, sliding_window=4,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    directory, _ = build_family(tmp_path, "mistral", config, seed=5)
    model = nanollm.load(directory)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17, 18]]
    batch = model.generate(prompts, max_new_tokens=12, temperature=0, eos_token_ids=[])
    assert [r.token_ids for r in batch] == [model.generate(p, max_new_tokens=12, temperature=0,
                                                           eos_token_ids=[]).token_ids for p in prompts]
    with pytest.raises(ValueError, match="padding_side='left'"):
        model.generate(prompts, max_new_tokens=2, padding_side="right")


def test_gemma3_with_its_head_size_256_on_the_emulated_kernels(tmp_path_factory):
    """The widest head the kernels hold (Gemma's 256), with q/k norms, a window and two RoPE bases, on the emulator."""
    config = dict(num_hidden_layers=2, num_key_value_heads=1, num_attention_heads=2, hidden_size=32,
                  intermediate_size=40, vocab_size=80, max_position_embeddings=128, head_dim=256,
                  hidden_activation="gelu_pytorch_tanh", layer_types=["sliding_attention", "full_attention"],
                  rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
                  query_pre_attn_scalar=256, sliding_window=5, tie_word_embeddings=True, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0)
    check_family(tmp_path_factory, "gemma3_text", config, seed=11, backend="emulator")
