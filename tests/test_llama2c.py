"""weights_tools.llama2c: llama2.c checkpoints against llama2.c's own arithmetic and against transformers.

Three references:
  - `run_c_logits` below, a line-by-line NumPy transcription of llama2.c's `run.c` forward (interleaved RoPE pairs,
    float64), applied to the .bin's tensors as stored: it checks that the RoPE permutation is right, which comparing
    two Hugging Face readers of the converted directory cannot;
  - transformers' LlamaForCausalLM reading the converted directory;
  - a transformers checkpoint from tests/hf_models.py, exported to version 1 and imported back.
Tolerance (float32 compute): max |ours - theirs| <= 1e-4 * max(1, max |logit|).
"""
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaForCausalLM

import nanollm
from tests.conftest import shared_file
from tests.hf_models import Options, build_checkpoint
from weights_tools.llama2c import (
    Llama2cError,
    convert_to_hf_dir,
    export_llama2c,
    main,
    read_llama2c,
    to_interleaved_order,
    to_rotate_half_order,
)
from weights_tools.safetensors import open_checkpoint

STORIES = "models/stories260K/stories260K.bin"


def assert_logits_close(ours, theirs):
    scale = max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(ours - theirs).max())
    assert err <= 1e-4 * scale, f"max |diff| {err:.3g} > 1e-4 * {scale:.3g}; first ours {ours.ravel()[:4]} " \
                                f"theirs {theirs.ravel()[:4]}"


def transformers_logits(directory, ids):
    model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(ids))).logits.numpy()


def run_c_logits(path, tokens):
    """llama2.c's run.c `forward`, one token at a time, transcribed into NumPy (float64). -> (T, V)

    Deliberately naive and independent of weights_tools: RoPE rotates pairs (i, i+1) of the stored wq/wk outputs with
    frequency 10000^(-(i % hs)/hs), exactly as run.c's loop does; matrices are (out, in) and applied as w @ x.
    """
    m = read_llama2c(path)
    h, t = m.header, m.tensors
    hs, kv_dim, group = h.head_size, h.n_kv_heads * h.head_size, h.n_heads // h.n_kv_heads
    wcls = t["token_embedding_table"] if h.shared_classifier else t["wcls"]

    def rmsnorm(x, w):
        return x / np.sqrt(np.mean(x * x) + 1e-5) * w

    k_cache = np.zeros((h.n_layers, len(tokens), kv_dim))
    v_cache = np.zeros((h.n_layers, len(tokens), kv_dim))
    out = []
    for pos, token in enumerate(tokens):
        x = t["token_embedding_table"][token].astype(np.float64)  # (C,)
        for layer in range(h.n_layers):
            xb = rmsnorm(x, t["rms_att_weight"][layer])
            q, k, v = t["wq"][layer] @ xb, t["wk"][layer] @ xb, t["wv"][layer] @ xb
            for i in range(0, h.dim, 2):
                angle = pos / 10000.0 ** ((i % hs) / hs)
                for vec in (q, k) if i < kv_dim else (q,):
                    a, b = vec[i], vec[i + 1]
                    vec[i], vec[i + 1] = a * np.cos(angle) - b * np.sin(angle), a * np.sin(angle) + b * np.cos(angle)
            k_cache[layer, pos], v_cache[layer, pos] = k, v
            heads = []
            for head in range(h.n_heads):
                kv = slice((head // group) * hs, (head // group + 1) * hs)
                scores = k_cache[layer, : pos + 1, kv] @ q[head * hs : (head + 1) * hs] / np.sqrt(hs)
                p = np.exp(scores - scores.max())
                heads.append((p / p.sum()) @ v_cache[layer, : pos + 1, kv])
            x = x + t["wo"][layer] @ np.concatenate(heads)
            xb = rmsnorm(x, t["rms_ffn_weight"][layer])
            gate, up = t["w1"][layer] @ xb, t["w3"][layer] @ xb
            x = x + t["w2"][layer] @ (gate / (1 + np.exp(-gate)) * up)
        out.append(wcls @ rmsnorm(x, t["rms_final_weight"]))
    return np.array(out)


# -- the RoPE permutation ------------------------------------------------------------------------------------------


def test_permutation_worked_example():
    """One head, hs = 4: llama2.c's rows (re0, im0, re1, im1) = [a0, a1, b0, b1] become Hugging Face's
    (re0, re1, im0, im1) = [a0, b0, a1, b1]; with two heads each head is reordered on its own."""
    rows = np.array([[0.0], [1.0], [2.0], [3.0]])  # a0, a1, b0, b1
    assert to_rotate_half_order(rows, n_heads=1).ravel().tolist() == [0, 2, 1, 3]
    two_heads = np.arange(8.0)[:, None]
    assert to_rotate_half_order(two_heads, n_heads=2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@settings(max_examples=25)
@given(n_heads=st.integers(1, 4), half=st.integers(1, 5), cols=st.integers(1, 6), seed=st.integers(0, 1000))
def test_permutation_inverse_and_rope_equivalence(n_heads, half, cols, seed):
    """to_interleaved_order undoes to_rotate_half_order; and rotating interleaved pairs of w @ x (llama2.c) is the
    permuted rotate_half rotation (Hugging Face), so both orders give the same q . k."""
    rng = np.random.default_rng(seed)
    hs = 2 * half
    w = rng.standard_normal((n_heads * hs, cols))
    assert np.array_equal(to_interleaved_order(to_rotate_half_order(w, n_heads), n_heads), w)
    x, angles = rng.standard_normal(cols), rng.uniform(0, 6, half)  # one angle per pair
    y = (w @ x).reshape(n_heads, half, 2)  # llama2.c: pairs (2j, 2j+1)
    c, s = np.cos(angles), np.sin(angles)
    interleaved = np.stack([y[..., 0] * c - y[..., 1] * s, y[..., 0] * s + y[..., 1] * c], axis=-1)
    z = (to_rotate_half_order(w, n_heads) @ x).reshape(n_heads, 2, half)  # HF: halves (j, j + hs/2)
    rotate_half = np.stack([z[:, 0] * c - z[:, 1] * s, z[:, 1] * c + z[:, 0] * s], axis=1)
    np.testing.assert_allclose(rotate_half.reshape(-1), to_rotate_half_order(interleaved.reshape(-1, 1), n_heads)
                               .ravel(), atol=1e-12)


# -- stories260K ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stories_dir(tmp_path_factory):
    return convert_to_hf_dir(shared_file(STORIES), tmp_path_factory.mktemp("stories") / "hf")


def test_stories260k_header():
    """The README of ../shared gives the header: dim 64, hidden 172, 5 layers, 8 heads, 4 KV heads, vocab 512 (tied),
    seq_len 512; the legacy file then holds 260,032 parameters + 2 x 512 x 4 RoPE table entries in 1,056,540 bytes."""
    m = read_llama2c(shared_file(STORIES))
    h = m.header
    assert (h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len) == \
        (64, 172, 5, 8, 4, 512, 512)
    assert h.version == 0 and h.shared_classifier and "wcls" not in m.tensors
    assert m.tensors["freq_cis_real"].shape == (512, 4)


def test_stories260k_matches_run_c(stories_dir):
    """The converted directory, run by nanollm, gives run.c's logits: the RoPE permutation is right (with wq/wk left
    in llama2.c's order the difference is of the order of the logits themselves)."""
    tokens = [1] + np.random.default_rng(0).integers(0, 512, 23).tolist()
    expected = run_c_logits(shared_file(STORIES), tokens)
    assert_logits_close(nanollm.load(stories_dir).forward([tokens])[0], expected)


def test_stories260k_matches_transformers_and_direct_load(stories_dir):
    ids = np.random.default_rng(1).integers(0, 512, (2, 80))
    ours = nanollm.load(stories_dir).forward(ids)
    assert_logits_close(ours, transformers_logits(stories_dir, ids))
    direct = nanollm.load(shared_file(STORIES)).forward(ids)
    np.testing.assert_array_equal(direct, ours)  # the same float32 weights through the same code


def test_legacy_to_version1_keeps_every_tensor(tmp_path):
    """Rewriting the legacy file as version 1 reorders the tensors and drops the RoPE tables, nothing else:
    1,040,128 bytes of parameters + the 256-byte header."""
    legacy = read_llama2c(shared_file(STORIES))
    v1_path = export_llama2c(shared_file(STORIES), tmp_path / "v1.bin")
    assert v1_path.stat().st_size == 256 + 260_032 * 4
    raw = v1_path.read_bytes()
    assert raw[:4] == b"24ka" and struct.unpack_from("<i", raw, 4)[0] == 1 and raw[36] == 1
    v1 = read_llama2c(v1_path)
    assert v1.header.version == 1 and v1.header.shared_classifier
    for name, a in v1.tensors.items():
        np.testing.assert_array_equal(a, legacy.tensors[name])
    assert set(legacy.tensors) - set(v1.tensors) == {"freq_cis_real", "freq_cis_imag"}


def write_legacy(path, dims, tensors, shared):
    """A legacy file by hand, as llama2.c's export.py `legacy_export` lays it out (negative vocab_size = untied)."""
    dim, hidden, L, nh, nkv, V, seq = dims
    order = ["token_embedding_table", "rms_att_weight", "wq", "wk", "wv", "wo", "rms_ffn_weight", "w1", "w2", "w3",
             "rms_final_weight", "freq_cis_real", "freq_cis_imag"] + ([] if shared else ["wcls"])
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", dim, hidden, L, nh, nkv, V if shared else -V, seq))
        for name in order:
            f.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())


def test_untied_legacy_file(tmp_path):
    """A negative vocab_size in a legacy header means a separate classifier wcls after the RoPE tables: it must
    become lm_head, and nanollm, transformers and run.c must agree on the logits it produces."""
    m = read_llama2c(shared_file(STORIES))
    h = m.header
    tensors = dict(m.tensors, wcls=np.random.default_rng(2).standard_normal((512, 64)).astype(np.float32))
    path = tmp_path / "untied.bin"
    write_legacy(path, (h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len),
                 tensors, shared=False)
    read = read_llama2c(path)
    assert not read.header.shared_classifier and read.header.vocab_size == 512
    np.testing.assert_array_equal(read.tensors["wcls"], tensors["wcls"])
    out = convert_to_hf_dir(path, tmp_path / "hf")
    assert "lm_head.weight" in open_checkpoint(out)
    tokens = [1, 5, 300, 17, 42, 99, 7]
    ours = nanollm.load(out).forward([tokens])
    assert_logits_close(ours, transformers_logits(out, [tokens]))
    assert_logits_close(ours[0], run_c_logits(path, tokens))


# -- a transformers checkpoint, exported and imported back ---------------------------------------------------------


@pytest.mark.parametrize("options", [
    Options(arch="llama", n_layer=2, n_head=4, n_kv_head=2, head_dim=8, vocab_size=97, tied=False, seed=3),
    Options(arch="llama", n_layer=1, n_head=6, n_kv_head=1, head_dim=4, vocab_size=61, tied=True, seed=4),
], ids=["gqa-untied", "mqa-tied"])
def test_transformers_checkpoint_round_trip(tmp_path, options):
    """GQA/MQA Llama written by transformers -> version-1 .bin -> Hugging Face directory: the same bytes in every
    tensor (float32 is carried exactly, the permutation is undone exactly) and transformers' logits."""
    original, reference = build_checkpoint(tmp_path / "original", options)
    bin_path = export_llama2c(original, tmp_path / "model.bin")
    assert bin_path.read_bytes()[36] == int(options.tied)
    back = convert_to_hf_dir(bin_path, tmp_path / "back")
    before, after = open_checkpoint(original), open_checkpoint(back)
    assert set(after) == set(before) - ({"lm_head.weight"} if options.tied else set())
    for name in after:
        np.testing.assert_array_equal(after[name], before[name])
    ids = np.random.default_rng(options.seed).integers(0, options.vocab_size, (2, 40))
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids)).logits.numpy()
    assert_logits_close(nanollm.load(back).forward(ids), expected)
    assert_logits_close(nanollm.load(bin_path).forward(ids), expected)


def test_export_refuses_what_llama2c_cannot_hold(tmp_path):
    """run.c has no biases and a fixed RoPE base of 10000: such models are refused, not exported wrongly."""
    directory, _ = build_checkpoint(tmp_path / "m", Options(arch="llama", attention_bias=True, rope_theta=500000.0))
    with pytest.raises(Llama2cError, match=r"cannot hold this model: biases; RoPE base 500000"):
        export_llama2c(directory, tmp_path / "x.bin")
    gpt2, _ = build_checkpoint(tmp_path / "g", Options(arch="gpt2"))
    with pytest.raises(Llama2cError, match="architecture 'gpt2'"):
        export_llama2c(gpt2, tmp_path / "y.bin")


# -- malformed files ------------------------------------------------------------------------------------------------


def legacy_bytes(dim=8, hidden_dim=12, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=10, seq_len=4, cut=0,
                 extra=b""):
    """A tied legacy file of the right size for its header, by hand: per layer two norms, wq and wo (dim x dim),
    wk and wv (kv x dim), w1/w2/w3 (hidden x dim); then the embedding, the final norm and two (seq_len, hs/2) tables.
    The default header gives 10*8 + 8 + 64 + 2*4*8 + 64 + 8 + 3*12*8 + 8 + 2*4*2 = 600 floats = 2,400 bytes."""
    hs = dim // n_heads if n_heads > 0 else 0
    floats = (vocab_size * dim + n_layers * (2 * dim + 2 * dim * dim + 2 * n_kv_heads * hs * dim + 3 * hidden_dim * dim)
              + dim + 2 * seq_len * (hs // 2))
    header = struct.pack("<7i", dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len)
    data = np.arange(max(floats, 0), dtype="<f4").tobytes()
    return header + data[: len(data) - cut] + extra


def version1_bytes(version=1, shared=1, length=256):
    prefix = struct.pack("<Ii7iB", 0x616B3432, version, 8, 12, 1, 2, 1, 10, 4, shared)
    return prefix.ljust(256, b"\0")[:length]


def test_small_valid_file_reads(tmp_path):
    """The hand-built file the malformed cases below start from is itself valid."""
    (tmp_path / "ok.bin").write_bytes(legacy_bytes())
    assert (tmp_path / "ok.bin").stat().st_size == 28 + 2_400
    m = read_llama2c(tmp_path / "ok.bin")
    assert m.tensors["wk"].shape == (1, 4, 8) and m.tensors["freq_cis_imag"].shape == (4, 2)
    assert m.tensors["token_embedding_table"][0, 1] == 1.0  # data starts right after the 28-byte header


@pytest.mark.parametrize("content, message", [
    (b"\x01\x02", "too short for a llama2.c header"),
    (legacy_bytes(cut=4), "implies 2,400 bytes of float32 tensors after the 28-byte header, but the file holds 2,396"),
    (legacy_bytes(extra=b"\0" * 4), "but the file holds 2,404"),
    (legacy_bytes(n_heads=0, vocab_size=-3), "non-positive sizes \\(n_heads=0\\)"),
    (legacy_bytes(n_heads=3, n_kv_heads=3), "dim=8 is not a multiple of n_heads=3"),
    (legacy_bytes(n_heads=2, n_kv_heads=3), "n_heads=2 is not a multiple of n_kv_heads=3"),
    (legacy_bytes(dim=6, n_heads=2, n_kv_heads=2), "head size 3 is odd"),
    (version1_bytes(version=2), "version 2 \\(llama2.c's int8 Q8_0 export\\) is not supported"),
    (version1_bytes(shared=7), "shared_classifier byte is 7"),
    (version1_bytes(length=40), "version header is 256 bytes, file has only 40"),
], ids=["tiny", "truncated", "trailing", "zero", "heads-split", "kv-split", "odd-head", "version2", "flag", "v1-short"])
def test_malformed_files_give_one_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(Llama2cError, match=message):
        read_llama2c(path)
    assert main(["import", str(path), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(path) in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_import_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "ok.bin").write_bytes(legacy_bytes())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    assert main(["import", str(tmp_path / "ok.bin"), str(tmp_path / "out")]) == 1
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "ok.bin"), str(tmp_path / "new")]) == 0
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["config.json", "model.safetensors"]
