"""--trace (nanollm/views/trace.py): every stage of the prefill and of the first decode steps, in order, with the shapes
that flow, the KV cache's size and the bytes and FLOPs of each step, recorded by a backend that wraps the real one.

Random checkpoints written by transformers at odd sizes: GPT-2 (learned positions, LayerNorm, GELU, tied head), Llama
with grouped-query heads (RoPE, RMSNorm, SwiGLU, untied head) and Qwen3 (grouped-query heads, each head's q and k
normalised before RoPE). The expected stages and shapes are written out here from the families' definitions, not
read from the trace.
"""
import pytest

import nanollm
from nanollm.loader import DEMO_MODEL
from nanollm.views.trace import format_trace, trace_generation, traced
from tests.hf_families import SPECIAL, build_family, rope
from tests.hf_models import Options, build_checkpoint

PROMPT = [5, 17, 3, 42, 8, 33]  # T = 6 positions
CHECKPOINTS = {  # name -> (directory -> (directory, transformers reference))
    "gpt2": lambda d: build_checkpoint(d, Options(arch="gpt2", n_layer=2, n_head=3, head_dim=6, vocab_size=61)),
    "llama": lambda d: build_checkpoint(d, Options(arch="llama", n_layer=2, n_head=4, n_kv_head=2, head_dim=6,
                                                   vocab_size=61, tied=False)),
    "qwen3": lambda d: build_family(d, "qwen3", dict(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, hidden_size=24,
        intermediate_size=40, vocab_size=61, max_position_embeddings=128, rope_parameters=rope(1e6),
        rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False, **SPECIAL)),
}
FIRST = {  # the stages before the first block
    "gpt2": ["embed", "positions (learned)", "positions (learned)"],  # the table's row, then its add
    "llama": ["embed"], "qwen3": ["embed"],
}
BLOCK = {
    "gpt2": ["attention norm", "q/k/v projection", "attention", "attention output", "residual add", "MLP norm",
             "MLP up", "MLP activation", "MLP down", "residual add"],
    "llama": ["attention norm", "q/k/v projection", "positions (RoPE)", "positions (RoPE)", "attention",
              "attention output", "residual add", "MLP norm", "MLP up", "MLP gate", "MLP activation", "MLP down",
              "residual add"],
    "qwen3": ["attention norm", "q/k/v projection", "q norm", "k norm", "positions (RoPE)", "positions (RoPE)",
              "attention", "attention output", "residual add", "MLP norm", "MLP up", "MLP gate", "MLP activation",
              "MLP down", "residual add"],
}
HEAD = {"gpt2": "logits (tied: tok_emb.T)", "llama": "logits", "qwen3": "logits (tied: tok_emb.T)"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (checkpoint directory, transformers reference), written once for the module."""
    return {name: build(tmp_path_factory.mktemp(name)) for name, build in CHECKPOINTS.items()}


def expected_stages(arch: str, n_layer: int) -> list[str]:
    blocks = [f"block {i}: {stage}" for i in range(n_layer) for stage in BLOCK[arch]]
    return FIRST[arch] + blocks + ["final norm", HEAD[arch], "logits to host", "processors", "choice"]


def expected_shapes(cfg, T: int, S: int) -> dict:
    """stage (without "block i: ") -> (input shapes, output shape) for batch 1, T positions, S keys. Both RoPE calls
    are listed: the queries', then the keys'."""
    V, C, H = cfg.vocab_size, cfg.n_embd, cfg.n_hidden
    nh, n_kv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    return {
        "embed": ([(V, C), (1, T)], (1, T, C)),
        "q/k/v projection": ((1, T, C), (1, T, (nh + 2 * n_kv) * hs)),
        "q norm": ((1, nh, T, hs), (1, nh, T, hs)),
        "k norm": ((1, n_kv, T, hs), (1, n_kv, T, hs)),
        "positions (RoPE)": [((1, nh, T, hs), (1, nh, T, hs)), ((1, n_kv, T, hs), (1, n_kv, T, hs))],
        "attention": ([(1, nh, T, hs), (1, n_kv, S, hs), (1, n_kv, S, hs)], (1, nh, T, hs)),
        "attention output": ((1, T, nh * hs), (1, T, C)),
        "MLP up": ((1, T, C), (1, T, H)),
        "MLP down": ((1, T, H), (1, T, C)),
        "final norm": ((1, 1, C), (1, 1, C)),  # generation projects only the last position
        "logits": ((1, 1, C), (1, 1, V)),
        "choice": ([(1, V), (1,)], (1,)),
    }


def check_shapes(p, cfg, T: int, S: int) -> None:
    expected = expected_shapes(cfg, T, S)
    ropes = iter(expected["positions (RoPE)"] * cfg.n_layer)
    for r in p.ops:
        stage = r.stage.split(": ", 1)[-1].split(" (tied")[0]
        want = next(ropes) if stage == "positions (RoPE)" else expected.get(stage)
        if want is None:
            continue
        inputs, output = want
        got_inputs = r.inputs if isinstance(inputs, list) else r.inputs[0]
        assert (got_inputs, r.output) == (inputs, output), (p.name, r.stage)


@pytest.mark.parametrize("arch", CHECKPOINTS)
def test_trace_shows_every_stage_in_order_with_its_shapes_and_the_cache(checkpoints, arch):
    model = nanollm.load(checkpoints[arch][0])
    cfg = model.config
    trace = trace_generation(model, PROMPT, decode_steps=2, temperature=0)
    T = len(PROMPT)
    assert [p.name for p in trace.passes] == ["prefill", "decode step 1", "decode step 2"]
    assert trace.prompt_ids == PROMPT and trace.pieces == [str(t) for t in PROMPT]  # no tokenizer: ids shown
    for n, p in enumerate(trace.passes):
        assert [r.stage for r in p.ops] == expected_stages(arch, cfg.n_layer)
        assert p.ids.shape == ((1, T) if n == 0 else (1, 1))
        S = T + n  # each decode step adds one position to the cache
        check_shapes(p, cfg, T if n == 0 else 1, S)
        keys, kv_bytes = p.kv_cache
        assert keys == (1, cfg.n_kv_head, S, cfg.head_dim)
        assert kv_bytes == 2 * cfg.n_layer * cfg.n_kv_head * S * cfg.head_dim * 4  # k and v, float32
        assert all(r.seconds >= 0 for r in p.ops)
    text = format_trace(trace)
    for stage in expected_stages(arch, cfg.n_layer) + ["KV cache", "GB/s achieved", "FLOP per byte"]:
        assert stage in text


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_decode_step_reads_every_weight_once_and_does_two_flops_per_multiply_add(checkpoints, arch):
    """Bytes: every matrix and vector in full, the embedding tables one row each, the tied head (tok_emb read as
    tok_emb.T) once; FLOPs: 2 per weight of each matmul, plus q k^T and weights x v over the S cached keys."""
    model = nanollm.load(checkpoints[arch][0])
    cfg, w = model.config, model.weights
    prefill, step = trace_generation(model, PROMPT, decode_steps=1, temperature=0).passes
    tables = [w.tok_emb] + ([w.pos_emb] if w.pos_emb is not None else [])
    arrays = [a for layer in w.layers for a in vars(layer).values() if a is not None] + \
        [a for a in (w.norm_f_w, w.norm_f_b, w.lm_head) if a is not None]
    row = cfg.n_embd * 4
    tied = w.tok_emb.nbytes if w.lm_head is None else 0
    assert step.total("weight_bytes") == sum(a.nbytes for a in arrays) + row * len(tables) + tied
    matrices = [m for layer in w.layers for m in (layer.w_qkv, layer.w_o, layer.w_up, layer.w_gate, layer.w_down)
                if m is not None]
    head = w.tok_emb.size if w.lm_head is None else w.lm_head.size
    S = len(PROMPT) + 1
    attention = cfg.n_layer * 2 * 2 * cfg.n_head * S * cfg.head_dim
    assert step.total("flops") == 2 * (sum(m.size for m in matrices) + head) + attention
    # "decode is memory-bound" as a number: a float32 weight (4 bytes) feeds one multiply-add (2 FLOP) per token,
    # about 0.5 FLOP per byte; the prefill reuses each weight read for every prompt position.
    assert 0.3 < step.flops_per_byte < 0.6
    assert prefill.flops_per_byte > 3 * step.flops_per_byte


def test_tracing_changes_nothing_and_gives_the_backend_back(checkpoints):
    """The same tokens traced and untraced, greedy and seeded sampling; the model's own backend is back afterwards,
    even when generation raises inside the block."""
    model = nanollm.load(checkpoints["llama"][0])
    backend = model.backend
    for options in (dict(temperature=0), dict(temperature=0.9, top_k=20, seed=3)):
        plain = model.generate(PROMPT, max_new_tokens=6, **options).token_ids
        assert trace_generation(model, PROMPT, max_new_tokens=6, **options).result.token_ids == plain
        assert model.backend is backend
    with pytest.raises(ValueError, match="temperature"), traced(model):
        model.generate(PROMPT, temperature=-1)
    assert model.backend is backend


def test_trace_without_kv_cache_recomputes_every_position(checkpoints):
    """kv_cache=False: each decode step runs the whole sequence again (T grows), the cache holds the same S."""
    model = nanollm.load(checkpoints["gpt2"][0])
    trace = trace_generation(model, PROMPT, decode_steps=2, temperature=0, kv_cache=False)
    T = len(PROMPT)
    assert [p.ids.shape for p in trace.passes] == [(1, T), (1, T + 1), (1, T + 2)]
    assert [p.kv_cache[0][2] for p in trace.passes] == [T, T + 1, T + 2]


def test_the_tokenize_stage_shows_each_token_with_its_text():
    """The demo model's own tokenizer: each id with the text piece it stands for, and the time encoding took."""
    model = nanollm.load(DEMO_MODEL)
    trace = trace_generation(model, "Once upon a time", decode_steps=1, temperature=0)
    assert trace.prompt_ids == model.tokenizer.encode_prompt("Once upon a time")
    assert "".join(trace.pieces) == "Once upon a time"
    assert trace.tokenize_seconds > 0
    tokens_line = format_trace(trace).splitlines()[1]
    assert tokens_line == "  " + " ".join(f"{token} {piece!r}" for token, piece in zip(trace.prompt_ids, trace.pieces))


def test_trace_on_the_emulator_matches_the_numpy_trace(checkpoints):
    """The CUDA kernels run by the emulator: the same stages, shapes and tokens as the NumPy reference."""
    directory = checkpoints["llama"][0]
    traces = [trace_generation(nanollm.load(directory, backend=b), PROMPT, decode_steps=2, temperature=0)
              for b in ("numpy", "emulator")]
    assert traces[1].backend == "emulator"
    outline = [[[(r.stage, r.op, r.inputs, r.output) for r in p.ops] for p in t.passes] for t in traces]
    assert outline[0] == outline[1]
    assert traces[0].result.token_ids == traces[1].result.token_ids


@pytest.mark.parametrize("bad, error", [(dict(prompt=[[1, 2], [3, 4]]), TypeError),
                                        (dict(decode_steps=-1), ValueError), (dict(decode_steps=1.5), ValueError)])
def test_trace_refuses_what_it_cannot_show(checkpoints, bad, error):
    """One prompt (a batch's rows would share one trace), a whole number of decode steps: else one clear error."""
    model = nanollm.load(checkpoints["gpt2"][0])
    with pytest.raises(error, match="one prompt|decode_steps"):
        trace_generation(model, **(dict(prompt=PROMPT) | bad))


def test_speculative_trace_shows_each_verification(checkpoints):
    """Prompt lookup on a prompt that repeats itself, and the model as its own assistant: every pass after the
    prefill is a verification of the last token + its proposals (T = 1 + proposed), named and explained, and the
    tokens each gained add up to the generation, which is plain greedy's."""
    model = nanollm.load(checkpoints["llama"][0])
    prompt = PROMPT * 3
    plain = model.generate(prompt, max_new_tokens=12, temperature=0).token_ids
    for options in (dict(prompt_lookup_num_tokens=3), dict(assistant_model=model, num_assistant_tokens=3)):
        trace = trace_generation(model, prompt, max_new_tokens=12, decode_steps=20, temperature=0, **options)
        assert trace.result.token_ids == plain
        verifications = trace.passes[1:]
        assert [p.name for p in verifications] == [f"verification {i}" for i in range(1, len(verifications) + 1)]
        assert [p.ids.shape[1] for p in verifications] == [1 + len(p.verification.proposed) for p in verifications]
        assert plain == plain[:1] + [t for p in verifications for t in p.verification.tokens]
        text = format_trace(trace)
        for p in verifications:
            v = p.verification
            assert f"{p.name}: {1 + len(v.proposed)} position" in text
            assert f"kept {v.accepted}, then the model's own {str(v.token)!r}: {len(v.tokens)} token(s) from one " \
                   f"pass" in text
    assert any(p.verification.accepted for p in verifications)  # the model as its own draft keeps its proposals
