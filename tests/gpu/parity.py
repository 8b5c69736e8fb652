"""GPU check, stage 2: whole forward passes of the CuPy backend against the NumPy backend and transformers on the GPU.

`python -m tests.gpu.parity` (tests/gpu/check.py runs it). Two random-weight checkpoints written by transformers
(tests/hf_models.py): a GPT-2 (head size 64: attention.cu's first bucket) and a Llama with grouped-query heads
(head size 128: the second bucket, untied output). Each is run twice, with float32 and with float16 weights
(CupyBackend(weight_dtype=...)), and compared against two references on exactly the same weights:
  numpy         nanollm's reference backend, float32 on the CPU
  transformers  the same files read by transformers, float32 on the GPU: full-precision matmuls (no TF32) and
                attention by torch's plain math kernel (SDPBackend.MATH: what the float32 reference means)
What is compared, for a 300-token prompt (past attention.cu's 256-key decode chunk, so decode runs split):
  forward  the logits of a stateless full pass, every position
  decode   the logits of each of 16 greedy steps through the KV cache, while both sides still hold the same tokens
  greedy   the 16 greedy ids (nanollm's by model.generate, chosen by the backend's sampler: sampling.cu on the GPU):
           identical, or different only from a step where the reference's top two logits are closer than the
           tolerance can tell apart (a near-tie: either token is a right answer there)
An error is the smallest rtol for which tests/kernel_harness.assert_close would pass (the same rule as every kernel
test), so the tolerances below read like the kernel tests' ones.

Tolerances, by weight dtype:
  float32  1e-4: the kernel tests' attention tolerance (ATTENTION_RTOL); sums run in other orders than BLAS and
           torch run them, and exp turns a score's absolute error into a relative error of its weight
  float16  1e-2: the checkpoint is stored in float16, so both references hold the very weights the GPU holds; what
           remains is CupyBackend.linear rounding each matmul's input activations and its output to float16
           (11 significant bits: up to 2^-11 = 4.9e-4 relative each; cuBLAS sums in float32), where the references
           keep float32. Those roundings add up over the matmuls of 4 layers, and attention's exp amplifies them: an
           emulation of exactly that arithmetic on the CPU gave 1.1e-3 (GPT-2) and 3.1e-3 (Llama) on these
           models, so 1e-2 leaves room for the GPU's summation order, not for a wrong kernel (errors of O(0.1-1))
"""
import sys
import tempfile
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import nanollm
from tests.hf_models import Options, build_checkpoint, cached_step
from tests.kernel_harness import ATTENTION_RTOL

TOLERANCES = {np.dtype(np.float32): ATTENTION_RTOL, np.dtype(np.float16): 1e-2}
# init_std: logits of std ~1.6 (largest ~8) whose top two lie ~0.3 apart at the median position, so greedy seldom
# meets a near-tie; activations stay far inside float16's range.
CASES = {
    "gpt2 4L 4x64": Options(arch="gpt2", n_layer=4, n_head=4, head_dim=64, vocab_size=2048, n_positions=512,
                            init_std=0.1),
    "llama 4L 8q/2kv x128": Options(arch="llama", n_layer=4, n_head=8, n_kv_head=2, head_dim=128, vocab_size=2048,
                                    n_positions=512, tied=False, init_std=0.05),
}
PROMPT_TOKENS, GREEDY_STEPS = 300, 16


def relative_error(got, want) -> float:
    """The smallest rtol for which |got - want| <= rtol * (|want| + max|want|) holds everywhere: kernel_harness's
    rule, as a number. Infinite where a non-finite value of either side is not matched exactly on the other."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shapes differ: {got.shape} != {want.shape}")
    finite = np.isfinite(want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    if (~finite & ~same).any() or (finite & ~np.isfinite(got)).any():
        return float("inf")
    if not finite.any():
        return 0.0
    scale = np.abs(want[finite]).max()
    diff = np.abs(got[finite] - want[finite])
    bound = np.abs(want[finite]) + scale  # (n,) zero only where want and its whole scale are zero
    if (diff[bound == 0] > 0).any():
        return float("inf")
    return float(np.max(diff[bound > 0] / bound[bound > 0], initial=0.0))


def greedy_nanollm(model, prompt: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding by model.generate, the product path: a prefill, then decode steps through the KV cache, each
    token chosen by the backend's sampler (sampling.cu on the GPU). int (1, T) -> (tokens int (steps,), float32
    (steps, V): the logits each token was chosen from)."""
    choices = []
    model.generate(prompt[0].tolist(), max_new_tokens=steps, temperature=0, eos_token_ids=[],
                   on_choice=lambda seq, choice: choices.append(choice))
    return np.array([c.token for c in choices]), np.stack([c.raw for c in choices])


@torch.inference_mode()
def greedy_transformers(model, prompt: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The same with transformers' own cache, on the model's device. -> (tokens (steps,), float32 (steps, V))"""
    out = model(torch.from_numpy(prompt).to(model.device), use_cache=True)
    tokens, rows = [], []
    for _ in range(steps):
        rows.append(out.logits[0, -1].float().cpu().numpy())
        token = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        tokens.append(int(token))
        out = cached_step(model, token, out)
    return np.array(tokens), np.stack(rows)


@torch.inference_mode()
def forward_transformers(model, ids: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(ids).to(model.device)).logits.float().cpu().numpy()  # (1, T, V)


def transformers_reference(model, prompt: np.ndarray, steps: int) -> tuple:
    """(forward logits, greedy tokens, greedy logits) of transformers in float32 throughout: matmuls without TF32
    and attention by the math kernel, where a fused one may compute scores at lower precision on the GPU."""
    torch.set_float32_matmul_precision("highest")  # torch's default, stated: TF32 would cost ~1e-3 relative
    with sdpa_kernel(SDPBackend.MATH):
        return forward_transformers(model, prompt), *greedy_transformers(model, prompt, steps)


def agreeing_steps(got: np.ndarray, want: np.ndarray, want_logits: np.ndarray, tol: float) -> tuple[int, bool]:
    """(how many greedy steps chose the reference's token, whether a difference is allowed), from each side's tokens
    (steps,) and the reference's logits (steps, V). A difference is allowed at a near-tie only: the reference's top
    two logits closer than 4 * tol * max|logit|, which two values each off by the tolerance's 2 * tol * max|logit|
    can swap."""
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            top2 = np.sort(want_logits[i])[-2:]
            return i, bool(top2[1] - top2[0] <= 4 * tol * np.abs(want_logits[i]).max())
    return len(want), True


@dataclass
class Comparison:
    case: str
    weights: str  # "float32" or "float16"
    reference: str  # "numpy" or "transformers"
    forward: float  # relative_error of the full pass's logits
    decode: float  # relative_error of the greedy steps' logits while both sides hold the same tokens
    greedy: int  # steps that chose the reference's token
    steps: int
    near_tie: bool  # the first different step (if any) is a near-tie of the reference
    tol: float

    @property
    def passed(self) -> bool:
        return max(self.forward, self.decode) <= self.tol and self.near_tie

    def row(self) -> str:
        greedy = f"{self.greedy}/{self.steps}" + ("" if self.greedy == self.steps else " tie" if self.near_tie else "")
        return (f"{self.case:<22}{self.weights:<9}{self.reference:<14}{self.forward:>9.1e}{self.decode:>9.1e}"
                f"{self.tol:>7.0e}{greedy:>11}  {'pass' if self.passed else 'FAIL'}")


def compare(case: str, weights: str, reference: str, got, want, tol: float) -> Comparison:
    """got/want: (forward logits (1, T, V), greedy tokens (steps,), greedy logits (steps, V)) of the backend and of
    a reference."""
    (got_forward, got_tokens, got_logits), (want_forward, want_tokens, want_logits) = got, want
    same, allowed = agreeing_steps(got_tokens, want_tokens, want_logits, tol)
    decode = relative_error(got_logits[: same + 1], want_logits[: same + 1])  # step `same` had the same context
    return Comparison(case, weights, reference, relative_error(got_forward, want_forward), decode, same,
                      len(want_tokens), allowed, tol)


def check_case(case: str, options: Options, backend, prompt_tokens: int = PROMPT_TOKENS,
               steps: int = GREEDY_STEPS, device: str = "cuda") -> list[Comparison]:
    """One checkpoint (stored in the backend's weight dtype) on `backend` against NumPy and transformers on device."""
    dtype = np.dtype(getattr(backend, "weight_dtype", np.float32))
    storage = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}[dtype]
    with tempfile.TemporaryDirectory() as d:
        path, hf = build_checkpoint(d, replace(options, storage=storage))
        ours, ref = nanollm.load(path, backend=backend), nanollm.load(path)
    hf = hf.to(device)
    prompt = np.random.default_rng(0).integers(0, options.vocab_size, size=(1, prompt_tokens))
    got = ours.forward(prompt), *greedy_nanollm(ours, prompt, steps)
    wants = {"numpy": (ref.forward(prompt), *greedy_nanollm(ref, prompt, steps)),
             "transformers": transformers_reference(hf, prompt, steps)}
    return [compare(case, dtype.name, name, got, want, TOLERANCES[dtype]) for name, want in wants.items()]


def report(comparisons: list[Comparison]) -> bool:
    """Print the table and the one-line summary the GPU check shows; True when every comparison passed."""
    print(f"{'case':<22}{'weights':<9}{'reference':<14}{'forward':>9}{'decode':>9}{'tol':>7}{'greedy':>11}")
    for c in comparisons:
        print(c.row())
    worst = {}  # weight dtype -> the largest error of its comparisons
    for c in comparisons:
        worst[c.weights] = max(worst.get(c.weights, 0.0), c.forward, c.decode)
    figures = ", ".join(f"{w} worst {e:.1e} (tol {TOLERANCES[np.dtype(w)]:.0e})" for w, e in worst.items())
    passed = sum(c.passed for c in comparisons)
    identical = sum(c.greedy == c.steps for c in comparisons)
    print(f"{passed}/{len(comparisons)} comparisons pass; {figures}; greedy ids identical in "
          f"{identical}/{len(comparisons)}")
    return passed == len(comparisons)


def main() -> int:
    # CuPy is optional: the tests run this module on the emulator
    from nanollm.backends.cupy_backend import CupyBackend

    torch.manual_seed(0)
    comparisons = [c for case, options in CASES.items() for dtype in TOLERANCES
                   for c in check_case(case, options, CupyBackend(weight_dtype=dtype))]
    return 0 if report(comparisons) else 1


if __name__ == "__main__":
    sys.exit(main())
