"""nanollm: a transformer inference engine written from scratch to be read.

Reading order: config.py -> backends/numpy_backend.py -> rope.py -> kv_cache.py -> model.py -> sampling.py ->
generation.py -> generate.py (the CLI); weights come in through weights_tools/ (safetensors.py, convert.py) and text
through tokenizer/.
"""
from .loader import load

__all__ = ["load", "Tokenizer"]


def __getattr__(name):
    # The tokenizer package is imported on first use, so `import nanollm` stays light.
    if name == "Tokenizer":
        from .tokenizer import Tokenizer

        return Tokenizer
    raise AttributeError(f"module 'nanollm' has no attribute {name!r}")
