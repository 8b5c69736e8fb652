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
from .backends.cpu_kernels import CpuKernelError, load_kernel
from .model import Model
from .request import OPTIONS, SAMPLING_FIELDS, GenerationSettings, Option, SamplingParams
from .tokenizer import load_tokenizer

DEFAULT_REPO = "gpt2"
DEMO_MODEL = Path(__file__).resolve().parent / "demo_model"

# generation_config.json: its do_sample, and the options of request.OPTIONS that transformers also reads from it,
# each read as the JSON type of its kind (early_stopping: true, false or "never"). Their ranges are those of
# generate()'s own arguments, checked by the same code (check_generation_values). transformers 5's GenerationConfig
# loads almost anything here (`top_p: [1]`, `num_beams: "2"`) and fails, or not, at generate time.
FILE_OPTIONS = {o.name: o for o in OPTIONS if o.from_file != "no"}
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")  # only eos_token_id may be a list


def read_option(fields: convert.JsonFields, key: str, option: Option | None):
    """One key of generation_config.json, read as the JSON type of its option's kind (do_sample: a bool)."""
    if key == "early_stopping":
        return fields.one_of(key, (True, False, "never"))
    if option is None or option.kind is bool:
        return fields.boolean(key)
    return fields.integer(key, minimum=option.minimum) if option.kind is int else fields.number(key)


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


def default_backend(*, stderr=None) -> str:
    """The command line's backend when none is named: "cpu" (the fast path) where its kernels build, which needs a C++
    compiler at the first use; else a one-line notice and "numpy", which needs nothing but NumPy."""
    try:
        load_kernel()
        return "cpu"
    except CpuKernelError as e:
        reason = str(e).splitlines()[0]
        print(f"nanollm: the cpu backend is not available ({reason}); using the numpy backend (slower)",
              file=stderr or sys.stderr)
        return "numpy"


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
    values = {key: read_option(fields, key, option) for key, option in {"do_sample": None, **FILE_OPTIONS}.items()
              if key in fields}
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
    options = {key: value for key, value in values.items() if key in FILE_OPTIONS}
    try:
        sampling = SamplingParams(**{key: options.pop(key) for key in SAMPLING_FIELDS if key in options})
        GenerationSettings(sampling=sampling, **options)
    except ValueError as e:
        raise convert.CheckpointError(f"{where}: {e}") from None
