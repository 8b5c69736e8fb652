"""nanollm.load: a model directory, a llama2.c file or a hub name -> a ready Model. The one place a Model is built.

    directory   config.json + *.safetensors (single or sharded), tokenizer files and generation_config.json when
                present (weights_tools.convert reads the checkpoint, nanollm.tokenizer the tokenizer)
    x.bin       a llama2.c checkpoint (weights_tools.llama2c; no tokenizer)
    a name      "gpt2", "org/name": fetched from the Hugging Face hub into the cache first (weights_tools.hub)

With no name at all, the CLI uses `default_model_path`: GPT-2 from the cache or the hub, else the small demo model
shipped inside this package (nanollm/demo_model/, trained by weights_tools/train_demo.py), so it always has one.
"""
import sys
from pathlib import Path

from weights_tools import convert, hub, llama2c  # modules, not names: see weights_tools/__init__.py

from .backends import get_backend
from .model import Model
from .request import GenerationSettings, SamplingParams
from .tokenizer import load_tokenizer

DEFAULT_REPO = "gpt2"
DEMO_MODEL = Path(__file__).resolve().parent / "demo_model"

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
    """Load a model (see the module docstring) onto `backend` ("numpy", "cupy", "emulator" or a backend object)."""
    path = Path(source)
    if path.is_file() and path.suffix == ".bin":
        cfg, weights = llama2c.load_llama2c_checkpoint(path)
        return Model(cfg, weights, get_backend(backend))
    if not path.is_dir():
        path = hub.resolve_model(str(source), revision=revision)
    cfg, weights = convert.load_hf_checkpoint(path)
    return Model(cfg, weights, get_backend(backend), tokenizer=load_tokenizer(path),
                 generation_defaults=read_generation_config(path, cfg.vocab_size))


def default_model_path(*, stderr=None) -> Path:
    """GPT-2's local directory, fetched if needed; on failure a one-line notice and the demo model's directory."""
    try:
        return hub.resolve_model(DEFAULT_REPO)
    except (hub.HubError, OSError) as e:
        print(f"nanollm: GPT-2 is not available ({e}); using the small demo model shipped with nanollm instead",
              file=stderr or sys.stderr)
        return DEMO_MODEL


def read_generation_config(path: Path, vocab_size: int) -> dict:
    """The keys of generation_config.json that nanollm reads, checked ({} when the file is absent).

    Checked here, at load, not at the first generate: a wrong type or value is one CheckpointError naming the file
    and the key. null means "not set", as in transformers' GenerationConfig, except for eos_token_id, where null
    says "no end-of-sequence token" (so config.json's is not used). Special ids outside the vocabulary are dropped
    with one warning, as for config.json.
    """
    file = Path(path) / "generation_config.json"
    if not file.exists():
        return {}
    fields = convert.JsonFields(convert.read_json(file), str(file))
    values = {key: read(fields, key) for key, read in GENERATION_FIELDS.items() if key in fields}
    ignored = []
    for key in SPECIAL_IDS:
        if key in fields.data:
            values[key] = fields.token_ids(key, vocab_size, ignored, several=key == "eos_token_id")
    convert.warn_ignored_ids(str(file), ignored, vocab_size)
    check_generation_values(values, str(file))
    return values


def check_generation_values(values: dict, where: str) -> None:
    """Run the file's values through the checks generate() applies to its arguments (SamplingParams,
    GenerationSettings), so the ranges are written once; an error names the file (and, in its text, the key)."""
    try:
        sampling = SamplingParams(**{key: values[key] for key in SAMPLING_KEYS if key in values})
        GenerationSettings(sampling=sampling, **{key: values[key] for key in SETTINGS_KEYS if key in values})
    except ValueError as e:
        raise convert.CheckpointError(f"{where}: {e}") from None
