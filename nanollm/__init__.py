"""nanollm: a transformer inference engine written from scratch to be read.

Reading order, bottom floor first (each module imports only from the ones before it; README.md has the table):
  data        config.py -> weights.py -> kv_cache.py (files.py, memory.py: reading, writing, sizes)
  math        backends/numpy_backend.py -> rope.py -> transformer.py -> sampling.py
  requests    request.py (settings, prompts, results)
  generation  logits_processors.py -> stopping.py -> beam_search.py -> generation.py; chat.py
  top         model.py (Model) -> loader.py (nanollm.load) -> generate.py (the command line);
              serve/ (python -m nanollm.serve: the OpenAI API over HTTP, one scheduler thread owning the model)
  watching    views/ (every stage of a choice, a trace of the ops, attention maps, plots: generate.py's --show-probs,
              --trace, --show-attention, --plot); learn/ (python -m nanollm.learn: lessons on the demo model)
  text        tokenizer/ (its own docstring gives its reading order)
  weights     weights_tools/ (safetensors.py -> convert.py -> hub.py, llama2c.py, inspect.py)
  the GPU     backends/kernel_backend.py -> kernels/*.cu; kernels/emulator/ runs them on the CPU
"""
from .loader import load
from .tokenizer import Tokenizer

__all__ = ["load", "Tokenizer"]
