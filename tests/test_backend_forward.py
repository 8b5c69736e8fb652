"""Whole forward passes on the kernel backends match the NumPy reference (1e-4) on small random models.

Two architectures cover every kernel the model calls: a GPT-2 (LayerNorm, GELU, learned positions, biases, tied
output) and a Llama with grouped-query heads (RMSNorm, RoPE, SwiGLU, untied output), plus an MQA Llama decoding
against a KV cache with left padding, where decode attention runs split into 32-key chunks. Weights are random:
the point is that the kernels compute what the NumPy ops compute, whatever the numbers.
"""
import numpy as np
import pytest

from nanollm.backends import get_backend
from nanollm.backends.numpy_backend import NumpyBackend
from nanollm.config import ModelConfig, Rope
from nanollm.model import LayerWeights, Model, ModelWeights
from tests.kernel_harness import KERNEL_BACKENDS, assert_close, make_backend


def small_config(arch: str, **overrides) -> ModelConfig:
    gpt2 = arch == "gpt2"
    fields = dict(arch=arch, vocab_size=61, n_layer=2, n_head=4, n_kv_head=4 if gpt2 else 2, n_embd=24,
                  head_dim=6 if gpt2 else 8, n_hidden=40, max_seq_len=64, norm_eps=1e-5, tie_embeddings=gpt2,
                  qkv_bias=gpt2, out_bias=gpt2, mlp_bias=gpt2)
    if gpt2:
        fields.update(positions="learned", norm="layer", mlp="gelu")
    else:
        fields.update(rope=Rope(rotary_dim=overrides.get("head_dim", 8)))
    return ModelConfig(**{**fields, **overrides})


def random_weights(cfg: ModelConfig, seed: int) -> ModelWeights:
    """Random float32 weights of the right shapes; norm gains near 1 so activations stay O(1) through the layers."""
    rng = np.random.default_rng(seed)
    C, H, V = cfg.n_embd, cfg.n_hidden, cfg.vocab_size

    def w(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def gain():
        return (1.0 + rng.standard_normal(C) * 0.1).astype(np.float32)

    gpt2 = cfg.arch == "gpt2"
    bias = (lambda n: w(n, scale=0.1)) if gpt2 else (lambda n: None)
    layers = [
        LayerWeights(attn_norm_w=gain(), attn_norm_b=bias(C), w_qkv=w(C, cfg.qkv_dim), b_qkv=bias(cfg.qkv_dim),
                     w_o=w(cfg.n_head * cfg.head_dim, C), b_o=bias(C), mlp_norm_w=gain(), mlp_norm_b=bias(C),
                     w_up=w(C, H), b_up=bias(H), w_gate=None if gpt2 else w(C, H), w_down=w(H, C), b_down=bias(C))
        for _ in range(cfg.n_layer)
    ]
    return ModelWeights(tok_emb=w(V, C), pos_emb=w(cfg.max_seq_len, C) if gpt2 else None, layers=layers,
                        norm_f_w=gain(), norm_f_b=bias(C), lm_head=None if cfg.tie_embeddings else w(C, V))


@pytest.fixture(scope="module", params=KERNEL_BACKENDS)
def be(request):
    return make_backend(request.param)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_forward_matches_numpy(be, arch):
    """B = 2 sequences of T = 37 tokens (past one 32-key attention tile): every logit within 1e-4."""
    cfg = small_config(arch)
    weights = random_weights(cfg, seed=1)
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, size=(2, 37))
    want = Model(cfg, weights, NumpyBackend()).forward(ids)
    got = Model(cfg, weights, be).forward(ids)
    assert_close(got, want, 1e-4, f"{arch} logits")


def test_backend_by_name_emulator():
    """backend="emulator" is what nanollm.load(dir, backend="emulator") passes: the same result by name."""
    cfg = small_config("llama", n_kv_head=1)
    weights = random_weights(cfg, seed=3)
    ids = np.random.default_rng(4).integers(0, cfg.vocab_size, size=(1, 5))
    backend = get_backend("emulator")
    assert backend.name == "emulator"
    assert_close(Model(cfg, weights, backend).forward(ids), Model(cfg, weights, NumpyBackend()).forward(ids),
                 1e-4, "emulator by name")


def test_cached_decode_with_padding_matches_numpy(be):
    """MQA Llama: a left-padded prefill of 34 slots (row 1 has 6 padding slots) then 4 decode steps against the KV
    cache (35 .. 38 keys: split decode in 32-key chunks), with the padding hidden by key_mask; logits within 1e-4."""
    cfg = small_config("llama", n_kv_head=1)
    weights = random_weights(cfg, seed=5)
    rng = np.random.default_rng(6)
    B, T, steps, pad = 2, 34, 4, 6
    ids = rng.integers(0, cfg.vocab_size, size=(B, T))
    real = np.ones((B, T + steps), dtype=bool)
    real[1, :pad] = False
    positions = np.broadcast_to(np.arange(T), (B, T)).copy()
    positions[1] = np.maximum(np.arange(T) - pad, 0)
    models = [Model(cfg, weights, NumpyBackend()), Model(cfg, weights, be)]
    caches = [m.new_cache(B, T + steps) for m in models]
    outs = [m.step(ids, c, positions, real[:, :T]) for m, c in zip(models, caches)]
    assert_close(outs[1], outs[0], 1e-4, "prefill logits")
    for i in range(steps):
        token = outs[0][:, -1].argmax(-1)[:, None]  # (B, 1): the same next token for both
        pos = positions[:, -1:] + 1 + i
        outs = [m.step(token, c, pos, real[:, : T + i + 1]) for m, c in zip(models, caches)]
        assert_close(outs[1], outs[0], 1e-4, f"decode step {i} logits")


def test_a_head_larger_than_the_kernels_hold_is_refused_at_load():
    cfg = small_config("llama", head_dim=264, n_kv_head=2)
    with pytest.raises(ValueError, match="head_dim=264 is more than the .* backend's attention kernel holds"):
        Model(cfg, random_weights(cfg, seed=0), make_backend("emulator"))
    Model(cfg, random_weights(cfg, seed=0), NumpyBackend())  # the reference runs any head size


def test_generation_samples_through_the_sampling_kernel_and_equals_numpy(monkeypatch):
    """On the emulator, every step of a sampled generation (temperature, top-k, top-p, min-p and a repetition
    penalty) launches kernels/sampling.cu's sample_rows: the kernel is on the product path, not only in its tests.
    With the same seed it chooses the NumPy backend's tokens (each step draws the same uniform number on both)."""
    cfg = small_config("llama")
    weights = random_weights(cfg, seed=4)
    emulated = Model(cfg, weights, make_backend("emulator"))
    launches = []
    kernel = emulated.backend._kernel

    def recording(file, name):
        launches.append(name)
        return kernel(file, name)

    monkeypatch.setattr(emulated.backend, "_kernel", recording)
    options = dict(max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.95, min_p=0.02, repetition_penalty=1.1,
                   seed=7, eos_token_ids=[])
    ours = emulated.generate([[3, 4, 5], [9, 1]], **options)
    reference = Model(cfg, weights, NumpyBackend()).generate([[3, 4, 5], [9, 1]], **options)
    assert launches.count("sample_rows") == 12  # one launch per step, for the whole batch
    assert [r.token_ids for r in ours] == [r.token_ids for r in reference]
    assert len({tuple(r.token_ids) for r in ours}) == 2  # sampled, not a degenerate repetition
