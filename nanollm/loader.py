"""nanollm.load: a model directory (or hub name) -> a ready Model on the chosen backend."""
from pathlib import Path

from .backends import get_backend
from .model import Model
from .tokenizer import load_tokenizer

# generation_config.json keys nanollm reads -> how each is read (a JsonFields getter: the JSON type). Their ranges
# are those of generate()'s own arguments, checked by the same code (check_generation_values). transformers 5's
# GenerationConfig loads almost anything here (`top_p: [1]`, `num_beams: "2"`) and fails, or not, at generate time.
GENERATION_FIELDS = {
    "do_sample": lambda f, key: f.boolean(key),
    "temperature": lambda f, key: f.number(key),
    "top_k": lambda f, key: f.integer(key, minimum=0),
    "top_p": lambda f, key: f.number(key),
    "min_p": lambda f, key: f.number(key),
    "repetition_penalty": lambda f, key: f.number(key),
    "min_new_tokens": lambda f, key: f.integer(key, minimum=0),
    "num_beams": lambda f, key: f.integer(key, minimum=1),
    "length_penalty": lambda f, key: f.number(key),
    "early_stopping": lambda f, key: f.one_of(key, (True, False, "never")),
}
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")  # only eos_token_id may be a list
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")  # SamplingParams fields
SETTINGS_KEYS = ("min_new_tokens", "num_beams", "length_penalty", "early_stopping")  # GenerationSettings fields


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
                 generation_defaults=read_generation_config(path, cfg.vocab_size))


def read_generation_config(path: Path, vocab_size: int) -> dict:
    """The keys of generation_config.json that nanollm reads, checked ({} when the file is absent).

    Checked here, at load, not at the first generate: a wrong type or value is one CheckpointError naming the file
    and the key. null means "not set", as in transformers' GenerationConfig, except for eos_token_id, where null
    says "no end-of-sequence token" (so config.json's is not used). Special ids outside the vocabulary are dropped
    with one warning, as for config.json.
    """
    from weights_tools.convert import JsonFields, read_json, warn_ignored_ids

    file = Path(path) / "generation_config.json"
    if not file.exists():
        return {}
    fields = JsonFields(read_json(file), str(file))
    values = {key: read(fields, key) for key, read in GENERATION_FIELDS.items() if key in fields}
    ignored = []
    for key in SPECIAL_IDS:
        if key in fields.data:
            values[key] = fields.token_ids(key, vocab_size, ignored, several=key == "eos_token_id")
    warn_ignored_ids(str(file), ignored, vocab_size)
    check_generation_values(values, str(file))
    return values


def check_generation_values(values: dict, where: str) -> None:
    """Run the file's values through the checks generate() applies to its arguments (SamplingParams,
    GenerationSettings), so the ranges are written once; an error names the file (and, in its text, the key)."""
    from weights_tools.convert import CheckpointError

    from .generation import GenerationSettings
    from .logits_processors import SamplingParams

    try:
        sampling = SamplingParams(**{key: values[key] for key in SAMPLING_KEYS if key in values})
        GenerationSettings(sampling=sampling, **{key: values[key] for key in SETTINGS_KEYS if key in values})
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
