"""--show-attention (nanollm/views/attention.py): the attention weights of one layer, for the prompt (from the prefill)
and each new token (from its decode step against the KV cache), checked three independent ways:

  * against a NumPy re-implementation, in this file, of GPT-2's first layer from transformers' own tensors:
    softmax(q k^T / sqrt(hs)) under the causal mask;
  * against transformers' output_attentions, every head of every layer, for GPT-2, Llama with grouped-query heads,
    and Gemma 2 (soft-capped scores, its own scale, a sliding window on every other layer);
  * for what every attention matrix is: rows sum to 1, nothing above the diagonal.
"""
import math
import re

import numpy as np
import pytest
import torch

import nanollm
from nanollm.loader import DEMO_MODEL
from nanollm.views.attention import AttentionMap, attention_maps, format_attention, parse_attention_spec
from tests.hf_families import SPECIAL, build_family, rope
from tests.test_trace import CHECKPOINTS

PROMPT = [5, 17, 3, 42, 8, 33, 12]  # T = 7: longer than Gemma 2's window below, so the window hides keys
NEW = 5  # new tokens: the first 4 are read by a decode step each, so the maps are (7 + 4) x (7 + 4)
# Gemma 2's shape, with the scores capped at 2 instead of its 50, so that the cap changes weights noticeably
GEMMA2 = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_size=32,
              intermediate_size=40, vocab_size=61, max_position_embeddings=128, hidden_activation="gelu_pytorch_tanh",
              rope_parameters=rope(1e4), query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
              final_logit_softcapping=30.0, sliding_window=4, tie_word_embeddings=True, **SPECIAL)
ARCHS = ("gpt2", "llama", "gemma2")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (directory, transformers reference computing attention eagerly, so it returns the weights)."""
    built = {name: CHECKPOINTS[name](tmp_path_factory.mktemp(name)) for name in ("gpt2", "llama")}
    built["gemma2"] = build_family(tmp_path_factory.mktemp("gemma2"), "gemma2", GEMMA2)
    for _, reference in built.values():
        reference.set_attn_implementation("eager")
    return built


def generated(model, layer, head=None):
    return attention_maps(model, PROMPT, layer, head, max_new_tokens=NEW, temperature=0, eos_token_ids=[])


def reference_attentions(reference, ids) -> list[np.ndarray]:
    """transformers' attention weights of one full pass over ids: per layer, (nh, N, N)."""
    with torch.no_grad():
        out = reference(torch.tensor([ids]), output_attentions=True)
    return [a[0].numpy() for a in out.attentions]


def test_gpt2_first_layer_equals_softmax_of_q_k_over_sqrt_hs_computed_here(checkpoints):
    """GPT-2's layer 0, by hand from transformers' tensors: x = wte[ids] + wpe[positions]; LayerNorm; q, k from
    c_attn (a Conv1D: (in, out), applied as x @ W + b); then each head's softmax(q k^T / sqrt(hs)), causal."""
    directory, reference = checkpoints["gpt2"]
    model = nanollm.load(directory)
    hs, nh = model.config.head_dim, model.config.n_head
    maps = [generated(model, 0, head) for head in range(nh)]
    ids = [int(t) for t in maps[0].labels]  # without a tokenizer a token's label is its id
    N = len(ids)
    sd = {k: v.numpy().astype(np.float64) for k, v in reference.state_dict().items()}
    x = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][:N]  # (N, C)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    h = (x - mean) / np.sqrt(var + 1e-5) * sd["transformer.h.0.ln_1.weight"] + sd["transformer.h.0.ln_1.bias"]
    qkv = h @ sd["transformer.h.0.attn.c_attn.weight"] + sd["transformer.h.0.attn.c_attn.bias"]  # (N, 3C)
    C = nh * hs
    q = qkv[:, :C].reshape(N, nh, hs).transpose(1, 0, 2)  # (nh, N, hs)
    k = qkv[:, C : 2 * C].reshape(N, nh, hs).transpose(1, 0, 2)  # (nh, N, hs)
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(hs)  # (nh, N, N)
    scores = np.where(np.tril(np.ones((N, N), dtype=bool)), scores, -np.inf)  # a query sees itself and before
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    for head, m in enumerate(maps):
        assert m.weights.shape == (N, N) and m.prompt_len == len(PROMPT)
        np.testing.assert_allclose(m.weights, expected[head], atol=2e-6)
    np.testing.assert_allclose(generated(model, 0).weights, expected.mean(0), atol=2e-6)  # all heads averaged


@pytest.mark.parametrize("arch", ARCHS)
def test_every_layer_and_head_equals_transformers_attentions(checkpoints, arch):
    """The prefill's rows and the decode steps' rows (one query against the cache) together equal the attention
    matrix transformers computes in one pass over the same tokens."""
    directory, reference = checkpoints[arch]
    model = nanollm.load(directory)
    cfg = model.config
    first = generated(model, 0)
    ids = [int(t) for t in first.labels]
    assert len(ids) == len(PROMPT) + NEW - 1  # the last token chosen is never read
    expected = reference_attentions(reference, ids)
    for layer in range(cfg.n_layer):
        np.testing.assert_allclose(generated(model, layer).weights, expected[layer].mean(0), atol=2e-5)
        for head in range(cfg.n_head):
            np.testing.assert_allclose(generated(model, layer, head).weights, expected[layer][head], atol=2e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_sum_to_one_and_no_token_reads_a_later_one(checkpoints, arch):
    model = nanollm.load(checkpoints[arch][0])
    for layer in range(model.config.n_layer):
        w = generated(model, layer).weights
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
        assert not np.triu(w, k=1).any()  # exactly zero above the diagonal
        assert (np.diag(w) > 0).all()  # a token always reads itself


def test_gemma2_sliding_layer_hides_keys_beyond_its_window(checkpoints):
    """Gemma 2's layer 0 slides a window of 4 keys (the query's own included); layer 1 sees everything."""
    model = nanollm.load(checkpoints["gemma2"][0])
    sliding, full = generated(model, 0).weights, generated(model, 1).weights
    N = len(sliding)
    distance = np.arange(N)[:, None] - np.arange(N)  # (N, N) query - key
    assert not sliding[distance >= 4].any() and (sliding[(distance >= 0) & (distance < 4)] > 0).all()
    assert (full[distance >= 0] > 0).all()


def test_the_emulator_gives_the_numpy_backends_weights(checkpoints):
    """Queries and keys computed by the CUDA kernels (run by the emulator) give the same weights."""
    directory = checkpoints["llama"][0]
    maps = [generated(nanollm.load(directory, backend=b), 1) for b in ("numpy", "emulator")]
    assert maps[0].labels == maps[1].labels
    np.testing.assert_allclose(maps[1].weights, maps[0].weights, atol=1e-5)


def test_the_text_heat_map_by_hand():
    """Token 0 reads only itself (weight 1: '@'); token 1 splits evenly (0.5 is in (4/9, 5/9]: '+'); a later token
    is blank. Each cell is two characters wide, rows labelled with index and text, a line where decoding begins."""
    m = AttentionMap(layer=2, head=None, n_heads=4, weights=np.array([[1.0, 0.0], [0.5, 0.5]], dtype=np.float32),
                     labels=["Hi", " there"], prompt_len=1)
    lines = format_attention(m).splitlines()
    assert "layer 2, the mean of its 4 heads" in lines[0]
    assert lines[2] == "   0 'Hi'          @@"
    assert "new tokens" in lines[3]
    assert lines[4] == "   1 ' there'      ++++"
    assert lines[5].startswith("shades: ' ' 0") and "'@' <= 1.00" in lines[5]


def test_the_demo_model_map_is_labelled_with_its_token_pieces():
    model = nanollm.load(DEMO_MODEL)
    m = attention_maps(model, "Once upon a time", 1, max_new_tokens=3, temperature=0)
    pieces = [model.tokenizer.token_to_bytes(t).decode() for t in model.tokenizer.encode_prompt("Once upon a time")]
    assert m.labels[: m.prompt_len] == pieces
    text = format_attention(m)
    assert all(repr(piece) in text for piece in pieces)


@pytest.mark.parametrize("spec, parsed", [("3", (3, None)), ("0:2", (0, 2)), ("12:0", (12, 0))])
def test_layer_and_head_are_read_from_the_flag(spec, parsed):
    assert parse_attention_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["", "x", "-1", "1:", ":2", "1:2:3", "1.5", "1:h"])
def test_a_bad_flag_value_is_one_error_naming_it(spec):
    with pytest.raises(ValueError, match="--show-attention takes LAYER or LAYER:HEAD.*" + re.escape(repr(spec))):
        parse_attention_spec(spec)


@pytest.mark.parametrize("layer, head, message", [(2, None, "layer 2 is not one of the model's 2 layers"),
                                                  (0, 3, "head 3 is not one of the model's 3 attention heads"),
                                                  (-1, None, "layer must be a whole number")])
def test_a_layer_or_head_the_model_lacks_is_refused(checkpoints, layer, head, message):
    model = nanollm.load(checkpoints["gpt2"][0])
    with pytest.raises(ValueError, match=message):
        attention_maps(model, PROMPT, layer, head)


def test_beam_search_is_refused(checkpoints):
    model = nanollm.load(checkpoints["gpt2"][0])
    with pytest.raises(ValueError, match="follows one sequence"):
        attention_maps(model, PROMPT, 0, num_beams=2)
