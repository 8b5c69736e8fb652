"""Shared by the generation tests: random-weight models from tests/hf_models.py, loaded without the tokenizer step,
and a GPT-2 tokenizer for the tests that need text.

`load_model` builds the Model from the checkpoint directly (weights_tools + nanollm.model), so these tests do not
depend on which tokenizer files a directory holds; `gpt2_tokenizer` is nanollm's own tokenizer over the real GPT-2
files in ../shared/data.
"""
import json

import pytest
import torch

from nanollm.backends import get_backend
from nanollm.loader import read_generation_config
from nanollm.model import Model
from tests.conftest import shared_file
from tests.hf_models import Options, build_checkpoint



@pytest.fixture(scope="module")
def single_torch_thread():
    """Run transformers on one thread for the module, then restore the setting. With two cores shared by other
    test runs, torch's default of two threads made beam search ~100x slower (measured: 0.04 s vs 5-8 s for the same
    12 generate calls)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_model(directory, tokenizer=None) -> Model:
    from weights_tools.convert import load_hf_checkpoint

    cfg, weights = load_hf_checkpoint(directory)
    return Model(cfg, weights, get_backend("numpy"), tokenizer=tokenizer,
                 generation_defaults=read_generation_config(directory))


def build(directory, tokenizer=None, **options):
    """Write a random-weight checkpoint and load it: (nanollm model, transformers reference model)."""
    path, reference = build_checkpoint(directory, Options(**options))
    return load_model(path, tokenizer), reference


def write_gpt2_tokenizer_files(directory):
    """vocab.json + merges.txt (the Hugging Face names) from OpenAI's encoder.json + vocab.bpe."""
    encoder = json.loads(shared_file("tokenizers/gpt2/encoder.json").read_text(encoding="utf-8"))
    (directory / "vocab.json").write_text(json.dumps(encoder), encoding="utf-8")
    (directory / "merges.txt").write_text(shared_file("tokenizers/gpt2/vocab.bpe").read_text(encoding="utf-8"),
                                          encoding="utf-8")


def gpt2_tokenizer(directory):
    """nanollm's tokenizer for the real GPT-2 vocabulary, loaded from files written into directory."""
    from nanollm.tokenizer import load_tokenizer

    write_gpt2_tokenizer_files(directory)
    return load_tokenizer(directory)
