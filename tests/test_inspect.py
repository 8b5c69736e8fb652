"""weights_tools.inspect: parameter counts against transformers' `num_parameters()` on files it wrote or reads.

transformers counts each parameter object once, so a tied output projection is not counted twice, and it does not
count buffers. inspect must agree from the file headers alone, and `config_parameters` from config.json alone.
"""
import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from tests.conftest import shared_file
from hypothesis import find

from tests.hf_families import FAMILIES, STRATEGIES, build_family
from tests.hf_models import Options, build_checkpoint
from weights_tools.inspect import config_parameters, inspect_path, main
from weights_tools.llama2c import convert_to_hf_dir
from weights_tools.safetensors import open_checkpoint, save_safetensors

STORIES = "models/stories260K/stories260K.bin"


def transformers_count(directory) -> int:
    return AutoModelForCausalLM.from_pretrained(directory).num_parameters()


@pytest.mark.parametrize("options", [
    Options(arch="gpt2", tied=True),
    Options(arch="gpt2", tied=False, n_layer=3, head_dim=12, vocab_size=50, storage="F16", sharded=True),
    Options(arch="llama", n_head=4, n_kv_head=2, tied=False, attention_bias=True),
    Options(arch="llama", n_head=6, n_kv_head=1, head_dim=4, tied=True, storage="BF16"),
], ids=["gpt2-tied", "gpt2-untied-f16-sharded", "llama-gqa-bias", "llama-mqa-tied-bf16"])
def test_parameter_count_matches_transformers(tmp_path, options):
    directory, reference = build_checkpoint(tmp_path / "m", options)
    report = inspect_path(directory)
    assert report.parameters == reference.num_parameters()
    assert config_parameters(report.config) == reference.num_parameters()
    assert report.float32_bytes == 4 * reference.num_parameters()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_counts_as_transformers(tmp_path, family):
    """The norms, q/k norms, biases and fused projections of each family: counted from the files and from
    config.json alone, equal to transformers' count."""
    config = find(STRATEGIES[family](), lambda _: True)  # the simplest configuration the strategy draws
    directory, reference = build_family(tmp_path / "m", family, config)
    report = inspect_path(directory)
    assert report.parameters == reference.num_parameters() == config_parameters(report.config)


def test_stories260k_counts(tmp_path):
    """stories260K: 260,032 parameters (README header: 512*64 embedding + 5 layers of (2*64 norms + 64*64 q +
    2*32*64 k,v + 64*64 o + 3*172*64 MLP) + 64 final norm = 32,768 + 5*45,440 + 64), in the .bin and converted.
    The .bin's two RoPE tables (2 x 512 x 4 floats) are buffers, not parameters."""
    bin_report = inspect_path(shared_file(STORIES))
    converted = convert_to_hf_dir(shared_file(STORIES), tmp_path / "hf")
    assert bin_report.parameters == inspect_path(converted).parameters == transformers_count(converted) == 260_032
    assert bin_report.not_counted == ["freq_cis_real", "freq_cis_imag"]
    # KV cache, full context: 2 (k, v) x 5 layers x 4 KV heads x 512 positions x 8 (hs) x 4 bytes.
    assert bin_report.kv_bytes == 2 * 5 * 4 * 512 * 8 * 4 == 655_360


def test_tied_copy_and_buffers_are_not_counted(tmp_path):
    """A tied model whose file also stores lm_head.weight (a copy of the embedding) and GPT-2's causal-mask buffer
    attn.bias (1, 1, P, P): the count stays transformers' number."""
    directory, reference = build_checkpoint(tmp_path / "m", Options(arch="gpt2", tied=True))
    ckpt = open_checkpoint(directory)
    tensors = {name: np.array(ckpt[name]) for name in ckpt}
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"]
    tensors["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 160, 160), np.float32))
    del ckpt
    save_safetensors(directory / "model.safetensors", tensors, metadata={"format": "pt"})
    report = inspect_path(directory)
    assert report.parameters == reference.num_parameters()
    assert sorted(report.not_counted) == ["lm_head.weight", "transformer.h.0.attn.bias"]


def test_lone_safetensors_file_without_config(tmp_path, capsys):
    """A bare file: every tensor counted (nothing says an embedding is tied), no config, no memory estimate."""
    save_safetensors(tmp_path / "w.safetensors", {"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float16)})
    report = inspect_path(tmp_path / "w.safetensors")
    assert report.parameters == 17 and report.config is None
    assert main([str(tmp_path / "w.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "parameters: 17" in out and "config: none" in out


def test_cli_prints_tensors_and_budget(capsys):
    assert main([str(shared_file(STORIES))]) == 0
    out = capsys.readouterr().out
    assert "llama2.c legacy file" in out
    assert "wk                     F32    (5, 32, 64)                   40,960" in out
    assert "parameters: 260,032" in out and "n_kv_head = 4" in out
    assert "weights as float32: 0.99 MiB (1,040,128 bytes)" in out
    assert "KV cache at full context (512 positions, batch 1): 0.62 MiB (655,360 bytes)" in out


def test_cli_error_is_one_line(tmp_path, capsys):
    (tmp_path / "junk.bin").write_bytes(b"not a model at all, just text")
    assert main([str(tmp_path / "junk.bin")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
