"""Every backend offers the same API: the same public methods, each with the same parameters.

The model and generation call a backend without asking which one it is, so a parameter that one backend lacks,
names differently or makes keyword-only would fail only at run time, on the backend a test did not happen to use.
NumpyBackend is the reference; KernelBackend is the launch side shared by EmulatorBackend and CupyBackend (which
override a few methods: their signatures are checked too). Parameters are compared whole: name, order, kind
(positional or keyword-only), default and annotation. Return annotations may differ: a kernel backend returns arrays
of its own array library (CuPy on a GPU).
"""
import inspect

import pytest

from nanollm.backends import EmulatorBackend, NumpyBackend
from nanollm.backends.kernel_backend import KernelBackend


def cupy_backend():
    """CupyBackend, or a skip: its module raises ImportError without CuPy (an optional dependency)."""
    module = pytest.importorskip("nanollm.backends.cupy_backend", reason="CuPy is not installed", exc_type=ImportError)
    return module.CupyBackend


KERNEL_BACKENDS = {"KernelBackend": lambda: KernelBackend, "EmulatorBackend": lambda: EmulatorBackend,
                   "CupyBackend": cupy_backend}


def public_api(cls) -> dict:
    """{public name: its parameters (a method) or its value (a class attribute)}; instance state is not API."""
    api = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_"):
            continue
        api[name] = list(inspect.signature(member).parameters.values()) if callable(member) else member
    return api


@pytest.mark.parametrize("kernel_backend", KERNEL_BACKENDS)
def test_same_public_methods_with_the_same_parameters(kernel_backend):
    assert_same_api(KERNEL_BACKENDS[kernel_backend]())


def assert_same_api(cls, beyond=()):
    """cls offers NumpyBackend's public API, and besides it only the names in `beyond`."""
    reference, other = public_api(NumpyBackend), public_api(cls)
    other = {name: value for name, value in other.items() if name not in beyond}
    assert sorted(other) == sorted(reference), (
        f"only in {cls.__name__}: {sorted(set(other) - set(reference))}; "
        f"only in NumpyBackend: {sorted(set(reference) - set(other))}")
    for name, params in reference.items():
        if isinstance(params, list):
            assert other[name] == params, (
                f"{cls.__name__}.{name}{inspect.signature(getattr(cls, name))} != "
                f"NumpyBackend.{name}{inspect.signature(getattr(NumpyBackend, name))}")


def test_sample_keeps_the_signature_generation_calls():
    """Generation chooses every token through backend.sample(logits, u, temperature, top_k, top_p, min_p)."""
    for cls in (NumpyBackend, KernelBackend):
        params = inspect.signature(cls.sample).parameters
        assert [(p.name, p.default) for p in params.values()] == [
            ("self", inspect.Parameter.empty), ("logits", inspect.Parameter.empty), ("u", inspect.Parameter.empty),
            ("temperature", inspect.Parameter.empty), ("top_k", 0), ("top_p", 1.0), ("min_p", 0.0)]


def test_the_comparison_has_teeth():
    """A renamed parameter, a new keyword-only one and a missing method are each told apart."""

    class Renamed(NumpyBackend):
        def rope(self, x, cos, sine):
            return super().rope(x, cos, sine)

    class KeywordOnly(NumpyBackend):
        def softmax(self, x, *, axis=-1):
            return super().softmax(x, axis)

    class Extra(NumpyBackend):
        def sample_greedy(self, logits):
            return logits.argmax(-1)

    for cls in (Renamed, KeywordOnly, Extra):
        with pytest.raises(AssertionError):
            assert_same_api(cls)
