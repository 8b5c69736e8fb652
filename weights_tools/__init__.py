"""weights_tools: reading and writing checkpoint files without any deep-learning framework.

Read `safetensors.py` first: the file format every Hugging Face checkpoint uses, parsed and written from scratch.
"""
from weights_tools.safetensors import (
    Checkpoint,
    SafetensorsError,
    SafetensorsFile,
    TensorInfo,
    open_checkpoint,
    open_safetensors,
    save_safetensors,
    save_sharded,
)

__all__ = [
    "Checkpoint",
    "SafetensorsError",
    "SafetensorsFile",
    "TensorInfo",
    "open_checkpoint",
    "open_safetensors",
    "save_safetensors",
    "save_sharded",
]
