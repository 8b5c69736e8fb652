"""GPU check, stage 4: decode speed of nanollm's CuPy backend against transformers on the same GPU.

`python -m tests.gpu.decode` (tests/gpu/check.py runs it). GPT-2 124M and Qwen2.5-0.5B's shape, the checkpoints of
tests/bench/bench_model.py (random weights, written by transformers), both engines with float16 weights: nanollm
keeps activations float32 and rounds them to float16 at each matmul (CupyBackend's default), transformers computes
in float16 throughout (model.half(), its default attention). For each engine: prefill of a 128-token prompt, then
128 greedy decode steps through its own KV cache; the time per token is the mean over the steps. Runs alternate
between the engines (A B A B ...) and medians are reported, so a clock or load change hits both alike.

Timing is wall clock around whole calls, read only once the GPU has finished: nanollm brings each step's logits to
the host (its own synchronisation, part of its cost), transformers keeps the argmax on the GPU and is synchronised
with torch.cuda.synchronize before each clock reading. Decode is memory-bound: the effective bandwidth is the bytes
of every weight (read once per token) over the time per token, next to the GPU's peak (bench_kernels.peaks).
"""
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import nanollm
from tests.bench.bench_kernels import peaks
from tests.bench.bench_model import SHAPES as BENCH_SHAPES
from tests.hf_models import cached_step

PROMPT_TOKENS, NEW_TOKENS, REPEATS = 128, 128, 3
SHAPES = {name: BENCH_SHAPES[name] for name in ("GPT-2 124M", "Qwen2.5-0.5B shape")}  # as make bench builds them


def time_nanollm(model, prompt: np.ndarray) -> tuple[float, float]:
    """(prefill seconds, decode seconds per token) of greedy decoding through the KV cache."""
    cache = model.new_cache(batch_size=1, max_len=prompt.shape[1] + NEW_TOKENS)
    t0 = time.perf_counter()
    logits = model.step(prompt, cache)  # (1, 1, V) on the host: the GPU has finished
    t1 = time.perf_counter()
    for _ in range(NEW_TOKENS):
        logits = model.step(np.array([[int(np.argmax(logits[0, -1]))]]), cache)  # (1, 1, V)
    return t1 - t0, (time.perf_counter() - t1) / NEW_TOKENS


def finished(device: torch.device) -> None:
    """Wait for the GPU's queued work (on the CPU, where tests run this module, work is done when it returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_transformers(model, prompt: np.ndarray) -> tuple[float, float]:
    """The same loop with transformers' cache, every clock reading after the GPU has finished."""
    ids = torch.from_numpy(prompt).to(model.device)  # (1, T)
    finished(model.device)
    t0 = time.perf_counter()
    out = model(ids, use_cache=True, logits_to_keep=1)
    finished(model.device)
    t1 = time.perf_counter()
    for _ in range(NEW_TOKENS):
        token = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        out = cached_step(model, token, out)
    finished(model.device)
    return t1 - t0, (time.perf_counter() - t1) / NEW_TOKENS


def bench(name: str, make_model, backend, peak_gbps: float, device: str = "cuda") -> tuple[float, float]:
    """Print one model's table. -> decode seconds per token (nanollm, transformers)"""
    torch.manual_seed(0)
    with torch.device(device):  # random initialisation on the GPU: seconds faster than on the CPU for 0.5B
        hf = make_model().half().eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d, safe_serialization=True)  # float16 safetensors: the weights both engines run
        ours = nanollm.load(d, backend=backend)
    weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())  # a tied table counted once
    prompt = np.random.default_rng(0).integers(0, ours.config.vocab_size, (1, PROMPT_TOKENS))
    time_nanollm(ours, prompt[:, :8]), time_transformers(hf, prompt[:, :8])  # warm-up: compiles, allocator, caches
    engine = f"nanollm ({backend.name})"
    runs = {engine: [], "transformers": []}
    for _ in range(REPEATS):
        runs[engine].append(time_nanollm(ours, prompt))
        runs["transformers"].append(time_transformers(hf, prompt))
    print(f"{name} ({weight_bytes / 1e6:.0f} MB of float16 weights)")
    print(f"  {'engine':<18}{f'prefill {PROMPT_TOKENS} (ms)':>18}{'decode (ms/token)':>19}{'weights GB/s':>14}"
          f"{'% of peak':>11}")
    med = {}  # engine -> (prefill seconds, decode seconds per token)
    for label, times in runs.items():
        med[label] = statistics.median(p for p, _ in times), statistics.median(t for _, t in times)
        gbps = weight_bytes / med[label][1] / 1e9
        share = f"{100 * gbps / peak_gbps:10.0f}%" if peak_gbps else f"{'?':>11}"
        print(f"  {label:<18}{med[label][0] * 1e3:>18.2f}{med[label][1] * 1e3:>19.3f}{gbps:>14.0f}{share}")
    (ours_pre, ours_tok), (hf_pre, hf_tok) = med.values()
    print(f"  {'ratio nanollm/hf':<18}{ours_pre / hf_pre:>18.2f}{ours_tok / hf_tok:>19.2f}")
    sys.stdout.flush()
    return ours_tok, hf_tok


def main() -> int:
    # CuPy is optional: imported where it is needed, as bench_kernels does
    from nanollm.backends import cupy_backend

    gpu, peak_gbps, _ = peaks(cupy_backend.cupy)
    print(f"{gpu}: peak {peak_gbps:.0f} GB/s; float16 weights; {REPEATS} alternating runs, medians\n")
    print(headline({name: bench(name, make_model, cupy_backend.CupyBackend(), peak_gbps)
                    for name, make_model in SHAPES.items()}))
    return 0


def headline(results: dict) -> str:
    """The last line, `make gpu-check`'s key figures. {model: (nanollm s/token, transformers s/token)} -> str"""
    figures = [f"{name} {ours * 1e3:.2f} vs {hf * 1e3:.2f} ({ours / hf:.2f}x)" for name, (ours, hf) in results.items()]
    return "decode ms/token nanollm vs transformers, float16: " + "; ".join(figures)


if __name__ == "__main__":
    sys.exit(main())
