"""nanollm.load: a model directory (or hub name) -> a ready Model on the chosen backend."""
from pathlib import Path

from .backends import get_backend
from .model import Model
from .tokenizer import load_tokenizer


def load(source, backend="numpy", *, revision: str = "main") -> Model:
    """Load a model from a directory holding config.json, *.safetensors (single or sharded) and, when present,
    tokenizer files and generation_config.json; or from a llama2.c `.bin` checkpoint. A name that is neither is
    fetched from the Hugging Face hub into the cache (weights_tools.hub)."""
    from weights_tools.convert import load_hf_checkpoint

    path = Path(source)
    if path.is_file() and path.suffix == ".bin":
        from weights_tools.llama2c import load_llama2c

        return load_llama2c(path, backend=backend)
    if not path.is_dir():
        from weights_tools.hub import resolve_model

        path = resolve_model(str(source), revision=revision)
    cfg, weights = load_hf_checkpoint(path)
    return Model(cfg, weights, get_backend(backend), tokenizer=load_tokenizer(path),
                 generation_defaults=read_generation_config(path))


def read_generation_config(path: Path) -> dict:
    """generation_config.json as a dict ({} when absent). A corrupt file is an error, not silently ignored."""
    from weights_tools.convert import read_json

    f = path / "generation_config.json"
    return read_json(f) if f.exists() else {}
