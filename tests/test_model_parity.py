"""nanollm's NumPy reference against transformers, on checkpoints transformers itself wrote.

Tolerance (float32 compute on both sides): max |ours - theirs| <= 1e-4 * max(1, max |logit|). F16 and BF16 storage is
compared with transformers reading the same stored values upcast to float32, so the tolerance stays the same and
what is tested is that nanollm decodes those dtypes exactly.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nanollm
from tests.hf_models import Options, build_checkpoint

T_LONG = 90  # long enough to exercise positions past 64


def assert_logits_close(ours, theirs):
    scale = max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(ours - theirs).max())
    assert err <= 1e-4 * scale, f"max |diff| {err:.3g} > 1e-4 * {scale:.3g}; first ours {ours.ravel()[:4]} " \
                                f"theirs {theirs.ravel()[:4]}"


@st.composite
def gpt2_options(draw):
    return Options(
        arch="gpt2", n_layer=draw(st.integers(1, 2)), n_head=draw(st.sampled_from([1, 2, 4])),
        head_dim=draw(st.sampled_from([4, 8, 12])), vocab_size=draw(st.integers(40, 130)),
        tied=draw(st.booleans()), storage=draw(st.sampled_from(["F32", "F16", "BF16"])),
        sharded=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )


@st.composite
def llama_options(draw):
    n_kv = draw(st.sampled_from([1, 2, 4]))  # 1 is multi-query attention
    return Options(
        arch="llama", n_layer=draw(st.integers(1, 2)), n_kv_head=n_kv, n_head=n_kv * draw(st.sampled_from([1, 2, 3])),
        head_dim=draw(st.sampled_from([4, 8, 16])), vocab_size=draw(st.integers(40, 130)), tied=draw(st.booleans()),
        rope_theta=draw(st.sampled_from([10000.0, 500000.0])), llama3_scaling=draw(st.booleans()),
        attention_bias=draw(st.booleans()), storage=draw(st.sampled_from(["F32", "F16", "BF16"])),
        sharded=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )


def check_forward_and_greedy(tmp_path_factory, options: Options):
    directory, reference = build_checkpoint(tmp_path_factory.mktemp("ckpt"), options)
    model = nanollm.load(directory)
    ids = np.random.default_rng(options.seed).integers(0, options.vocab_size, (2, T_LONG))

    ours = model.forward(ids)
    assert ours.dtype == np.float32 and ours.shape == (2, T_LONG, options.vocab_size)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(ids)).logits.numpy()
    assert_logits_close(ours, theirs)

    # Greedy: the same 64 token ids as transformers' own generate (both stop early at eos_token_id=2).
    prompt = ids[0, :8].tolist()
    result = model.generate(prompt, max_new_tokens=64, temperature=0)
    with torch.no_grad():
        # An explicit all-ones mask: otherwise transformers treats any prompt token equal to pad_token_id as padding.
        out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=64, do_sample=False, pad_token_id=2)
    assert result.token_ids == out[0, len(prompt):].tolist()


@settings(max_examples=15)
@given(options=gpt2_options())
def test_gpt2_matches_transformers(tmp_path_factory, options):
    check_forward_and_greedy(tmp_path_factory, options)


@settings(max_examples=25)
@given(options=llama_options())
def test_llama_matches_transformers(tmp_path_factory, options):
    check_forward_and_greedy(tmp_path_factory, options)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prefill_then_decode_equals_full_recompute(tmp_path, arch):
    """The cache path must give, at every step, the logits a full pass over the whole prefix gives."""
    directory, _ = build_checkpoint(tmp_path, Options(arch=arch, n_kv_head=2 if arch == "llama" else 4))
    model = nanollm.load(directory)
    ids = np.random.default_rng(1).integers(0, 97, (1, 100))
    full = model.forward(ids)  # (1, 100, V)
    cache = model.new_cache(batch_size=1, max_len=100)
    steps = [model.step(ids[:, :70], cache, last_only=False)]  # prefill 70 positions
    steps += [model.step(ids[:, t : t + 1], cache) for t in range(70, 100)]  # then 30 decode steps
    assert_logits_close(np.concatenate(steps, axis=1), full)


class DtypeRecorder:
    """Wraps a backend and records the dtype of every array an op returns."""

    def __init__(self, backend):
        self.backend, self.seen = backend, []

    def __getattr__(self, name):
        attr = getattr(self.backend, name)
        if not callable(attr) or name in ("asarray", "zeros", "to_numpy"):
            return attr

        def recorded(*args, **kwargs):
            out = attr(*args, **kwargs)
            if out is not None:  # write_slots writes into the cache and returns nothing
                self.seen.append((name, out.dtype))
            return out

        return recorded


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_activations_stay_float32(tmp_path, arch):
    """A float64 anywhere (say a NumPy float64 scalar) would promote everything after it and slow decode ~10x."""
    from nanollm.backends import NumpyBackend
    from nanollm.model import Model

    directory, _ = build_checkpoint(tmp_path, Options(arch=arch, llama3_scaling=arch == "llama"))
    loaded = nanollm.load(directory)
    recorder = DtypeRecorder(NumpyBackend())
    model = Model(loaded.config, loaded.weights, recorder)
    cache = model.new_cache(1, 20)
    model.step(np.arange(10)[None], cache)
    model.step(np.array([[3]]), cache)
    assert recorder.seen and {dtype for _, dtype in recorder.seen} == {np.dtype(np.float32)}, recorder.seen
    assert all(a.dtype == np.float32 for a in cache.k + cache.v)
