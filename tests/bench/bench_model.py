"""`make bench`: how close nanollm runs to the machine's limits on the CPU, and to transformers, in one process.

The backend is the cpu one (the NumPy reference with its matrix products in kernels/linear_cpu.cpp), the fast CPU
path; BENCH_BACKEND=numpy measures the reference itself (all of it NumPy and OpenBLAS) for comparison.

Three random-weight checkpoints written by transformers: GPT-2 124M (GPT2Config() defaults), a Llama shape with
grouped-query heads, and Qwen2.5-0.5B's shape (24 layers, 14 query / 2 key-value heads, q/k/v biases, a tied
151,936-token output projection: the vocabulary is a third of its weights). For each, every figure is a ratio to a
reference timed in the same invocation, because this machine's memory bandwidth drifts between two levels for
seconds at a time (a wall-clock figure from another run means little):

  decode vs gemv     batch-1 decode's effective bandwidth (bytes of weights a step reads / step time) over that of
                     one large gemv, x @ W with W (768, 50257) float32: the most a step could stream here. On the
                     cpu backend the gemv is its own kernel's (which sets OpenBLAS to one thread); the first lines
                     printed compare it with OpenBLAS's gemv on every thread, before that, so the reference is never
                     the weaker of the two.
                     Target >= 0.85. Split in two: the model's own matrix-vector products alone, back to back,
                     over the large gemv (what OpenBLAS reaches on matrices of these sizes: measured here, a 2.4 MB
                     matrix streams at a third of a 154 MB one's rate), and decode over those products alone (what
                     attention, norms, the KV cache and Python add). Each step is followed by one of each, so the
                     three see the same state of the machine.
  batch B / batch 1  decode tokens/s of B sequences over that of one (B x t1 / tB), the batch sizes taking turns
                     step by step. Target: batch 8 >= 6. Its ceiling, printed below it: 8 x t1 over batch 8's FLOP
                     floor (its matrix products at the kernel's 8-row rate on a matrix the caches hold, measured in
                     each round): what batch 8 would reach if its weights cost nothing to read and attention, norms
                     and Python nothing at all. At the higher bandwidth level it is near 6 (arithmetic, not memory).
  prefill / matmuls  a 128-token prefill over its matrix products alone (x @ w for every weight matrix at the same
                     shapes): what attention, norms and activations add, the two taking turns (5 runs each a
                     round, medians). Target <= 1.3.
  vs transformers    prefill and decode time per token, transformers (torch, same threads) as the reference.

Then the shipped demo model's batches (a tiny model: batching must never make it slower), and speculative decoding
on GPT-2 124M against plain greedy decoding, same prompt, same tokens (checked): prompt lookup on a repetitive
prompt, and an assistant (draft) model: the first layer of the same checkpoint, which predicts a random-weight
model's next token well because its residual stream is mostly the token embedding. Target: prompt lookup >= 1.5x
faster. Rounds alternate every measurement (A B A B ...); medians are reported. BENCH_REPEATS sets the rounds
(default 3).
"""
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import nanollm
from nanollm.loader import DEMO_MODEL
from nanollm.memory import keep_freed_memory
from tests.hf_models import cached_step

PROMPT_TOKENS, DECODE_STEPS, HF_DECODE_STEPS, PREFILL_RUNS = 128, 32, 32, 5
BATCHES = (1, 2, 4, 8, 16)
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
BACKEND = os.environ.get("BENCH_BACKEND", "cpu")
GEMV_SHAPE = (768, 50257)  # GPT-2's output projection: one large matrix-vector product


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def weight_matrices(model) -> list:
    """Every matrix a forward pass multiplies by, once each (a tied head is the embedding table, read as a matrix)."""
    w = model.weights
    layers = [a for layer in w.layers for a in vars(layer).values() if a is not None and a.ndim == 2]
    return layers + [w.tok_emb.T if w.lm_head is None else w.lm_head]


def decode_step_bytes(model) -> int:
    """Bytes of weights one decode step reads: every matrix once (the embedding rows it gathers are negligible)."""
    return sum(a.nbytes for a in weight_matrices(model))


def gemv_matrix() -> np.ndarray:
    """The large gemv's matrix, the same in every measurement. -> (768, 50257) float32"""
    return np.random.default_rng(1).random(GEMV_SHAPE, dtype=np.float32)


def large_gemv(model, matrix):
    """The reference, one row times matrix by the model's backend (OpenBLAS on numpy; the kernel, on its panels, on
    cpu), laid out once here, as the model's weights were at load."""
    be, x = model.backend, np.ones((1, GEMV_SHAPE[0]), np.float32)
    packed = be.weight(matrix)
    return lambda: be.linear(x, packed)


def decode_and_gemv_seconds(model, prompt, gemv) -> tuple[float, float, float]:
    """(median decode step, median large gemv (`gemv`, from `large_gemv`), median run of the model's own
    matrix-vector products), one of each in turn after every batch-1 decode step: the machine's bandwidth drifts
    between levels for seconds at a time, so the three are timed in the same fraction of a second. The third splits
    the gap between the first two: what the products reach on the model's matrix sizes, and what the rest of a step
    (attention, norms, Python) adds."""
    matrices = weight_matrices(model)
    rows = {a.shape[0]: np.ones((1, a.shape[0]), np.float32) for a in matrices}  # one input row per width
    cache = model.new_cache(batch_size=1, max_len=PROMPT_TOKENS + DECODE_STEPS + 1)
    token = model.step(prompt, cache)[:, -1].argmax(-1)[:, None]  # (1, 1)
    steps, gemvs, products = [], [], []
    linear = model.backend.linear  # the model's own matrix product (OpenBLAS on numpy, the kernel on cpu)
    for _ in range(DECODE_STEPS):
        t0 = time.perf_counter()
        token = model.step(token, cache)[:, -1].argmax(-1)[:, None]  # (1, 1)
        t1 = time.perf_counter()
        gemv()
        t2 = time.perf_counter()
        for a in matrices:
            linear(rows[a.shape[0]], a)
        steps.append(t1 - t0)
        gemvs.append(t2 - t1)
        products.append(time.perf_counter() - t2)
    return statistics.median(steps), statistics.median(gemvs), statistics.median(products)


def decode_step_seconds(model, prompt) -> dict[int, float]:
    """The median decode step of each batch size in BATCHES, after a prefill of the prompt (the same for each row).
    The batch sizes take turns step by step: the machine's bandwidth level moves every few seconds, and a ratio of two
    sizes timed one after the other (a second each) could compare two levels; taking turns, they see the same ones."""
    caches = {b: model.new_cache(batch_size=b, max_len=PROMPT_TOKENS + DECODE_STEPS + 1) for b in BATCHES}
    tokens = {b: model.step(np.repeat(prompt, b, axis=0), caches[b])[:, -1].argmax(-1)[:, None] for b in BATCHES}
    times = {b: [] for b in BATCHES}
    for _ in range(DECODE_STEPS):
        for b in BATCHES:
            t0 = time.perf_counter()
            tokens[b] = model.step(tokens[b], caches[b])[:, -1].argmax(-1)[:, None]  # (b, 1)
            times[b].append(time.perf_counter() - t0)
    return {b: statistics.median(t) for b, t in times.items()}


def flop_floor_seconds(model, rows: int) -> float:
    """A batch-`rows` step's matrix products (2 x rows x K x N FLOP a matrix) at the rate the kernel reaches on the
    model's smallest matrix, run back to back in the caches: the step's time if reading weights cost nothing."""
    matrices = weight_matrices(model)
    small = min(matrices, key=lambda a: a.shape[0] * a.shape[1])
    x, linear = np.ones((rows, small.shape[0]), np.float32), model.backend.linear
    linear(x, small)
    seconds = statistics.median(timed(lambda: linear(x, small)) for _ in range(50))

    def flop(a):
        return 2 * rows * a.shape[0] * a.shape[1]
    return sum(flop(a) for a in matrices) * seconds / flop(small)


def prefill_seconds(model, prompt) -> float:
    cache = model.new_cache(batch_size=1, max_len=PROMPT_TOKENS)
    return timed(lambda: model.step(prompt, cache))


def prefill_and_matmul_seconds(model, prompt) -> tuple[float, float]:
    """(prefill, its matrix products alone), each the median of PREFILL_RUNS runs taking turns. One prefill is a
    tenth of a second, and its time moved by up to 15% with what ran before it (measured: 116-135 ms for GPT-2, the
    products alone 101-104), so both sides are sampled alike, side by side."""
    runs = [(prefill_seconds(model, prompt), matmul_floor_seconds(model, PROMPT_TOKENS)) for _ in range(PREFILL_RUNS)]
    return statistics.median(p for p, _ in runs), statistics.median(m for _, m in runs)


def matmul_floor_seconds(model, T: int) -> float:
    """The matrix products of a T-position prefill alone: (T, in) @ w for every layer matrix, and the one row the
    output projection needs (generation projects only the last position)."""
    matrices = weight_matrices(model)
    inputs = {a.shape[0]: np.ones((T, a.shape[0]), np.float32) for a in matrices}  # one input per width
    head, last = matrices[-1], np.ones((1, matrices[-1].shape[0]), np.float32)
    linear = model.backend.linear

    def run():
        for a in matrices[:-1]:
            linear(inputs[a.shape[0]], a)
        linear(last, head)
    return timed(run)


@torch.inference_mode()
def transformers_seconds(model, prompt) -> tuple[float, float]:
    """(prefill, mean decode step) with transformers' own KV cache."""
    ids = torch.from_numpy(prompt)
    t0 = time.perf_counter()
    out = model(ids, use_cache=True, logits_to_keep=1)
    t1 = time.perf_counter()
    for _ in range(HF_DECODE_STEPS):
        out = cached_step(model, out.logits[:, -1].argmax(-1, keepdim=True), out)
    return t1 - t0, (time.perf_counter() - t1) / HF_DECODE_STEPS


def load_pair(hf_model):
    with tempfile.TemporaryDirectory() as d:
        hf_model.save_pretrained(d, safe_serialization=True)
        return nanollm.load(d, backend=BACKEND)


def bench(name, hf_model):
    ours = load_pair(hf_model)
    hf_model.eval()
    prompt = np.random.default_rng(0).integers(0, ours.config.vocab_size, (1, PROMPT_TOKENS))
    matrix = gemv_matrix()  # (768, 50257)
    reference = large_gemv(ours, matrix)
    measures = {
        "decode vs gemv": lambda: decode_and_gemv_seconds(ours, prompt, reference),
        "decode by batch": lambda: decode_step_seconds(ours, prompt),
        "batch 8 floor": lambda: flop_floor_seconds(ours, 8),
        "prefill vs matmuls": lambda: prefill_and_matmul_seconds(ours, prompt),
        "transformers": lambda: transformers_seconds(hf_model, prompt),
    }
    for fn in measures.values():  # warm-up: first touches of every page, thread pools started
        fn()
    runs = {k: [] for k in measures}
    for _ in range(REPEATS):
        for k, fn in measures.items():
            runs[k].append(fn())
    med = {k: statistics.median(run[i] for run in runs["prefill vs matmuls"])
           for i, k in enumerate(("prefill", "matmuls"))}
    med.update({f"decode {b}": statistics.median(run[b] for run in runs["decode by batch"]) for b in BATCHES})
    step, gemv, products = (statistics.median(run[i] for run in runs["decode vs gemv"]) for i in (0, 1, 2))
    hf_prefill = statistics.median(p for p, _ in runs["transformers"])
    hf_decode = statistics.median(d for _, d in runs["transformers"])

    gemv_gbs = matrix.nbytes / gemv / 1e9
    decode_gbs = decode_step_bytes(ours) / step / 1e9
    print(f"{name}: {decode_step_bytes(ours) / 1e6:.0f} MB of weights read per decode step")
    products_gbs = decode_step_bytes(ours) / products / 1e9
    rows = [("decode vs gemv (GB/s)", f"{decode_gbs:.1f} / {gemv_gbs:.1f}", decode_gbs / gemv_gbs, ">= 0.85"),
            ("  its matrices alone vs gemv (GB/s)", f"{products_gbs:.1f} / {gemv_gbs:.1f}", products_gbs / gemv_gbs,
             "BLAS on these sizes"),
            ("  decode vs its matrices alone", f"{step * 1e3:.1f} / {products * 1e3:.1f} ms", products / step,
             "the rest of a step")]
    for b in BATCHES[1:]:
        speedup = b * med["decode 1"] / med[f"decode {b}"]
        rows.append((f"batch {b} / batch 1 (tok/s)", f"{b / med[f'decode {b}']:.0f} / {1 / med['decode 1']:.0f}",
                     speedup, ">= 6" if b == 8 else ""))
        if b == 8:
            floor = statistics.median(runs["batch 8 floor"])
            rows.append(("  ceiling: 8 x t1 / FLOP floor (ms)", f"{8 * med['decode 1'] * 1e3:.1f} / {floor * 1e3:.1f}",
                         8 * med["decode 1"] / floor, "batch 8's most"))
    rows.append(("prefill / matmuls (ms)", f"{med['prefill'] * 1e3:.0f} / {med['matmuls'] * 1e3:.0f}",
                 med["prefill"] / med["matmuls"], "<= 1.3"))
    rows.append(("prefill vs transformers (ms)", f"{med['prefill'] * 1e3:.0f} / {hf_prefill * 1e3:.0f}",
                 med["prefill"] / hf_prefill, "< 1 is faster"))
    rows.append(("decode vs transformers (ms/token)", f"{med['decode 1'] * 1e3:.1f} / {hf_decode * 1e3:.1f}",
                 med["decode 1"] / hf_decode, "< 1 is faster"))
    print_rows(rows)
    return ours


def print_rows(rows):
    print(f"  {'':36}{'figures':>22}{'ratio':>8}  target")
    for what, figures, ratio, target in rows:
        print(f"  {what:36}{figures:>22}{ratio:>8.2f}  {target}")
    print()
    sys.stdout.flush()


def bench_small_batches():
    """The shipped demo model (4 layers, width 128): a step is mostly per-call overhead, not weights, so batching must
    still pay (more sequences per call), never cost: BLAS threads on tiny matrices can make a batch slower."""
    demo = nanollm.load(DEMO_MODEL, backend=BACKEND)
    prompt = np.random.default_rng(3).integers(0, demo.config.vocab_size, (1, PROMPT_TOKENS))
    decode_step_seconds(demo, prompt)  # warm-up
    runs = [decode_step_seconds(demo, prompt) for _ in range(REPEATS)]
    times = {b: [run[b] for run in runs] for b in BATCHES}
    t1 = statistics.median(times[1])
    print(f"demo model (shipped, {demo.config.n_layer} layers, width {demo.config.n_embd}): "
          f"decode step {t1 * 1e3:.2f} ms")
    print_rows([(f"batch {b} / batch 1 (tok/s)", f"{b / statistics.median(times[b]):.0f} / {1 / t1:.0f}",
                 b * t1 / statistics.median(times[b]), "> 1: batching never costs") for b in BATCHES[1:]])


def first_layer_draft(hf_model):
    """An assistant model: the same GPT-2 checkpoint cut to its first layer (same tokenizer, embeddings, head)."""
    draft = GPT2LMHeadModel(GPT2Config(**{**hf_model.config.to_dict(), "n_layer": 1}))
    draft.load_state_dict(hf_model.state_dict(), strict=False)  # the extra layers' weights are simply not used
    return load_pair(draft)


def bench_speculative(target, hf_model):
    """Greedy decoding of 64 tokens after a repetitive prompt: plain, prompt lookup, and an assistant model."""
    draft = first_layer_draft(hf_model)
    piece = np.random.default_rng(2).integers(0, target.config.vocab_size, 16).tolist()
    prompt = piece * 8  # 128 tokens: one 16-token phrase, eight times
    runs = {
        "plain greedy": {},
        "prompt lookup (k=10)": {"prompt_lookup_num_tokens": 10},
        "assistant model (1 layer)": {"assistant_model": draft},
    }
    for options in runs.values():
        target.generate(prompt[:32], max_new_tokens=4, temperature=0, **options)  # warm-up
    times, results = {k: [] for k in runs}, {}
    for _ in range(REPEATS):
        for k, options in runs.items():
            t0 = time.perf_counter()
            results[k] = target.generate(prompt, max_new_tokens=64, temperature=0, **options)
            times[k].append(time.perf_counter() - t0)
    plain = statistics.median(times["plain greedy"])
    print("GPT-2 124M, speculative decoding: 64 greedy tokens after a 16-token phrase repeated 8 times")
    print(f"  {'':30}{'ms':>8}{'speedup':>9}{'accepted':>10}  same tokens  target")
    for k in runs:
        s, t = results[k].stats, statistics.median(times[k])
        same = results[k].token_ids == results["plain greedy"].token_ids
        accepted = f"{s.acceptance_rate:.0%}" if s.proposed_tokens else ""
        target_text = ">= 1.5" if k.startswith("prompt lookup") else ""
        print(f"  {k:30}{t * 1e3:>8.0f}{plain / t:>9.2f}{accepted:>10}  {'yes' if same else 'NO':11}  {target_text}")
    print()


SHAPES = {  # random-weight checkpoints of real shapes (tests/gpu/decode.py times two of them on a GPU)
    "GPT-2 124M": lambda: GPT2LMHeadModel(GPT2Config()),
    "Llama shape (GQA 12q/4kv)": lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False)),
    "Qwen2.5-0.5B shape": lambda: Qwen2ForCausalLM(Qwen2Config(  # its config.json, with random weights
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rope_parameters={"rope_type": "default",
        "rope_theta": 1000000.0}, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False)),
}


def compare_gemv_references():
    """OpenBLAS's gemv on every thread against the cpu kernel's, alternated, before a CpuBackend exists (it sets
    OpenBLAS to one thread): shows that the kernel's gemv, the reference on the cpu backend, is not the weaker."""
    from nanollm.backends.cpu_backend import Panels
    from nanollm.backends.cpu_kernels import address, load_kernel

    kernel = load_kernel().linear_panels
    matrix = gemv_matrix()  # (768, 50257)
    packed, x, y = Panels(matrix), np.ones((1, GEMV_SHAPE[0]), np.float32), np.empty((1, GEMV_SHAPE[1]), np.float32)
    runs = {"OpenBLAS": lambda: x @ matrix,
            "cpu kernel": lambda: kernel(address(x), packed.address, None, address(y), 1, *matrix.shape, None, 0, 0)}
    times = {k: [] for k in runs}
    for _ in range(20):
        for k, fn in runs.items():
            times[k].append(timed(fn))
    print("one large gemv (768 x 50257 float32), alternated: "
          + ", ".join(f"{k} {matrix.nbytes / statistics.median(t) / 1e9:.1f} GB/s" for k, t in times.items()) + "\n")


def main():
    if BACKEND == "cpu":
        compare_gemv_references()
    keep_freed_memory()  # as the command line does: freed arrays stay warm for the next pass
    torch.manual_seed(0)
    print(f"backend: {BACKEND}; threads: torch {torch.get_num_threads()}, numpy (BLAS) "
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')}; {REPEATS} alternating rounds, medians; "
          f"prompt {PROMPT_TOKENS} tokens, {DECODE_STEPS} decode steps\n")
    models = {name: make() for name, make in SHAPES.items()}
    loaded = {name: bench(name, hf_model) for name, hf_model in models.items()}
    bench_small_batches()
    bench_speculative(loaded["GPT-2 124M"], models["GPT-2 124M"])


if __name__ == "__main__":
    main()
