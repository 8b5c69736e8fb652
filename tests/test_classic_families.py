"""The classic families' layout changes, worked by hand, and their hostile config.json values.

tests/test_family_parity.py shows Pythia, GPT-J, Falcon, phi-2 and StableLM-2 equal to transformers. Here: the two
reorderings the converter applies (ungroup_qkv, to_rotate_half) on small examples one can check by eye, and each new
config key's bad values ending in one CheckpointError that names the file and the key, next to what transformers 5
does with the same file. Its config classes check types, not these ranges or combinations: where it accepts, its
model then fails (a shape error, a TypeError, an AttributeError at the first forward pass) or runs what nanollm does
not (ReLU, ALiBi, per-head q/k weights, no rotation at all).
"""
import json
import shutil

import numpy as np
import pytest
import torch

import nanollm
from tests.conftest import time_limit
from tests.hf_families import SPECIAL, build_family
from tests.test_config_hostile import transformers_refuses
from weights_tools.convert import CheckpointError, to_rotate_half, ungroup_qkv


def test_ungroup_qkv_by_hand():
    """Pythia's per-head (q, k, v) triples and Falcon-40B's groups (two query heads, then their key and value)
    become q|k|v. Each output is named by its letter and head, so the expected order can be read off."""
    neox = np.array(["q0", "k0", "v0", "q1", "k1", "v1"])
    assert ungroup_qkv(neox, n_kv=2, hs=1).tolist() == ["q0", "q1", "k0", "k1", "v0", "v1"]
    falcon_40b = np.array(["q0", "q1", "k0", "v0", "q2", "q3", "k1", "v1"])
    assert ungroup_qkv(falcon_40b, n_kv=2, hs=1).tolist() == ["q0", "q1", "q2", "q3", "k0", "k1", "v0", "v1"]
    falcon_7b = np.array(["q0", "q1", "q2", "k", "v"])  # multi-query: one group, already q|k|v
    assert ungroup_qkv(falcon_7b, n_kv=1, hs=1).tolist() == falcon_7b.tolist()
    weight = np.arange(2 * 12).reshape(2, 12)  # (C=2, 3 heads' worth of hs=2 per group): rows move together
    assert ungroup_qkv(weight, n_kv=2, hs=2).shape == (2, 12)
    assert ungroup_qkv(weight, n_kv=2, hs=2)[1].tolist() == [12, 13, 18, 19, 14, 15, 20, 21, 16, 17, 22, 23]


def test_to_rotate_half_by_hand():
    """GPT-J rotates pairs (a0, a1), (b0, b1) of the first rotary_dim = 4 dims of a head; rotate-half pairs
    dimension j with j + 2, so the pairs' members go to the two halves: [a0 a1 b0 b1 | c d] -> [a0 b0 a1 b1 | c d],
    and the dims past rotary_dim stay where they were. Two heads of 6: each head on its own."""
    one = np.array(["a0", "a1", "b0", "b1", "c", "d"])
    assert to_rotate_half(one, n_heads=1, rotary_dim=4).tolist() == ["a0", "b0", "a1", "b1", "c", "d"]
    two = np.concatenate([one, np.char.add(one, "'")])
    assert to_rotate_half(two, n_heads=2, rotary_dim=4).tolist() == [
        "a0", "b0", "a1", "b1", "c", "d", "a0'", "b0'", "a1'", "b1'", "c'", "d'"]


def test_to_rotate_half_turns_gptj_rotation_into_the_rope_op():
    """The reason for the reordering: GPT-J's rotation (transformers' rotate_every_two) of q, reordered, equals
    nanollm's rope op (rotate-half, rotary_dim of hs) on the reordered q."""
    from nanollm.backends.numpy_backend import NumpyBackend
    from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb, create_sinusoidal_positions

    hs, r, T = 10, 6, 5
    q = np.random.default_rng(0).standard_normal((1, T, 1, hs)).astype(np.float32)  # (B, T, n, hs) as GPT-J holds it
    sincos = create_sinusoidal_positions(T, r)[None]  # (1, T, r): sin then cos
    sin, cos = torch.split(sincos, r // 2, dim=-1)
    theirs = torch.cat([apply_rotary_pos_emb(torch.from_numpy(q[..., :r]), sin, cos), torch.from_numpy(q[..., r:])],
                       dim=-1).numpy()  # (1, T, 1, hs)
    ours = NumpyBackend().rope(to_rotate_half(q, 1, r).transpose(0, 2, 1, 3), cos.numpy(), sin.numpy())
    np.testing.assert_allclose(ours.transpose(0, 2, 1, 3), to_rotate_half(theirs, 1, r), atol=1e-6)


# The checkpoints the hostile edits start from: small, with head size 16 and the released files' RoPE keys.
BASES = {
    "gpt_neox": dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, intermediate_size=40,
                     vocab_size=70, max_position_embeddings=64, rotary_pct=0.25, rotary_emb_base=10000),
    "gptj": dict(n_embd=64, n_head=4, n_layer=1, vocab_size=70, n_positions=64, rotary_dim=8),
    "falcon": dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, vocab_size=70,
                   max_position_embeddings=64, multi_query=True, parallel_attn=True),
    "phi": dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, intermediate_size=40, vocab_size=70,
                max_position_embeddings=64, partial_rotary_factor=0.5),
    "stablelm": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=1,
                     intermediate_size=40, vocab_size=70, max_position_embeddings=64, partial_rotary_factor=0.25),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return {family: build_family(tmp_path_factory.mktemp(family), family, dict(config, **SPECIAL),
                                 released=family != "gptj")[0] for family, config in BASES.items()}


# (family, changes to config.json, what the message says, what transformers 5 does with the same file)
CASES = [
    ("gpt_neox", dict(rotary_pct=0), "rotary_pct must be a finite number > 0, got 0", "accepts"),  # no RoPE at all
    ("gpt_neox", dict(rotary_pct=1.5), "rotary_pct is 1.5: 16 x 1.5 must be an even number of dims", "accepts"),
    ("gpt_neox", dict(rotary_pct=0.1875), "rotary_pct is 0.1875: 16 x 0.1875 must be an even number", "accepts"),
    ("gpt_neox", dict(rotary_pct="0.25"), "rotary_pct must be a finite number > 0, got \"0.25\"",
     "accepts"),  # then a TypeError building the model: int(head_size * "0.25")
    ("gpt_neox", dict(hidden_act="relu"), "hidden_act='relu' is not supported", "accepts"),
    ("gpt_neox", dict(hidden_act="quick_gelu"), "hidden_act='quick_gelu' is not supported", "accepts"),
    ("gpt_neox", dict(use_parallel_residual="true"), "use_parallel_residual must be true or false", "refuses"),
    ("gptj", dict(rotary_dim=3), "rotary_dim is 3: RoPE rotates an even number of dims, 2 .. head size 16",
     "accepts"),
    ("gptj", dict(rotary_dim=32), "rotary_dim is 32", "accepts"),
    ("gptj", dict(rotary_dim=0), "rotary_dim must be an integer >= 1, got 0", "accepts"),
    ("gptj", dict(activation_function="gelu_10"), "activation_function='gelu_10' is not supported", "accepts"),
    ("falcon", dict(alibi=True), "alibi is true: ALiBi attention biases (Falcon-RW) are not supported", "accepts"),
    ("falcon", dict(new_decoder_architecture=True, parallel_attn=False),
     "parallel_attn is false with new_decoder_architecture", "accepts"),
    ("falcon", dict(num_ln_in_parallel_attn=2), "num_ln_in_parallel_attn is 2 without new_decoder_architecture",
     "accepts"),
    ("falcon", dict(new_decoder_architecture=True, num_ln_in_parallel_attn=3),
     "num_ln_in_parallel_attn must be 1, 2 or null, got 3", "accepts"),
    ("falcon", dict(new_decoder_architecture=True, num_kv_heads=3),
     "num_attention_heads=4 is not a multiple of num_kv_heads=3", "accepts"),
    ("falcon", dict(multi_query=False, num_kv_heads=2), "num_kv_heads must equal num_attention_heads=4", "accepts"),
    ("falcon", dict(bias=1), "bias must be true or false, got 1", "refuses"),
    ("phi", dict(partial_rotary_factor=0.2), "partial_rotary_factor is 0.2: 16 x 0.2 must be an even number",
     "accepts"),
    ("phi", dict(hidden_act="relu"), "hidden_act='relu' is not supported", "accepts"),
    ("phi", dict(qk_layernorm="no"), "qk_layernorm must be true or false", "refuses"),
    ("stablelm", dict(qk_layernorm=True), "qk_layernorm is true: a LayerNorm with its own weights for each head",
     "accepts"),
    ("stablelm", dict(hidden_act="gelu"), "hidden_act is 'gelu', which is not supported (StableLM uses silu)",
     "accepts"),
    ("stablelm", dict(num_key_value_heads=3), "num_attention_heads=4 is not a multiple of num_key_value_heads=3",
     "accepts"),
]


@pytest.mark.parametrize("family, changes, message, transformers", CASES,
                         ids=[f"{c[0]}-{next(iter(c[1]))}-{i}" for i, c in enumerate(CASES)])
def test_bad_classic_config_values_are_one_error_naming_the_file_and_the_key(tmp_path, bases, family, changes,
                                                                             message, transformers):
    bad = tmp_path / "bad"
    shutil.copytree(bases[family], bad)
    config = json.loads((bad / "config.json").read_text(encoding="utf-8"))
    (bad / "config.json").write_text(json.dumps(dict(config, **changes)), encoding="utf-8")
    before = {p.name: p.read_bytes() for p in bad.iterdir()}
    with time_limit(10), pytest.raises(CheckpointError) as e:
        nanollm.load(bad)
    assert str(e.value).startswith(f"{bad / 'config.json'}: ") and message in str(e.value), str(e.value)
    assert {p.name: p.read_bytes() for p in bad.iterdir()} == before  # the model files are only read
    assert transformers_refuses(bad) == (transformers == "refuses")


@pytest.mark.parametrize("family, tensor", [("gptj", "lm_head.bias"), ("phi", "lm_head.bias"),
                                            ("gpt_neox", "embed_out.weight")])
def test_a_missing_output_projection_is_named(tmp_path, bases, family, tensor):
    """The output projection's bias of GPT-J and phi-2 is a tensor of its own: a file without it is refused by
    name, not run without it. GPT-J's name is `lm_head.bias` at the top level, beside `transformer.`'s tensors."""
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(bases[family], bad)
    tensors = load_file(bad / "model.safetensors")
    del tensors[tensor]
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"missing tensor .*'{tensor}'"):
        nanollm.load(bad)
