"""nanollm: a transformer inference engine written from scratch to be read.

Reading order:
  the model       config.py -> backends/numpy_backend.py -> rope.py -> kv_cache.py -> model.py
  generation      sampling.py -> logits_processors.py -> stopping.py -> generation.py -> beam_search.py -> chat.py
                  -> generate.py (the command line)
  text            tokenizer/ (its own docstring gives its reading order)
  weights         weights_tools/ (safetensors.py -> convert.py -> hub.py, llama2c.py, inspect.py)
  the GPU path    backends/kernel_backend.py -> kernels/*.cu; kernels/emulator.py runs them on the CPU
"""
from .loader import load
from .tokenizer import Tokenizer

__all__ = ["load", "Tokenizer"]
