"""Loading real-world checkpoint variants, and every way a bad model or bad input must fail: with one clear error."""
import json
import subprocess
import sys

import numpy as np
import pytest

import nanollm
from tests.hf_models import Options, build_checkpoint
from weights_tools.convert import CheckpointError
from weights_tools.safetensors import open_checkpoint, save_safetensors


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    directory, _ = build_checkpoint(tmp_path_factory.mktemp("gpt2"), Options(arch="gpt2"))
    return directory


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory, _ = build_checkpoint(tmp_path_factory.mktemp("llama"), Options(arch="llama", n_kv_head=2))
    return directory


def rewrite(src, dst, edit):
    """Copy a single-file checkpoint with its tensor dict (and config dict) changed by edit(tensors, config)."""
    dst.mkdir()
    tensors = {k: np.array(v) for k, v in open_checkpoint(src).items()}
    config = json.loads((src / "config.json").read_text())
    edit(tensors, config)
    save_safetensors(dst / "model.safetensors", tensors)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_gpt2_files_as_the_hub_stores_them(tmp_path, gpt2_dir):
    """The hub's own `gpt2` has bare names (no `transformer.`) and saves `attn.bias` causal-mask buffers; older
    checkpoints carry the prefix and a `masked_bias` scalar too. Both load and compute what transformers' file does."""
    n_pos = 160
    mask = np.tril(np.ones((n_pos, n_pos), dtype=bool))[None, None]  # (1, 1, P, P) as GPT-2 registered it

    def hub_style(tensors, config):
        for k in list(tensors):
            tensors[k.removeprefix("transformer.")] = tensors.pop(k)
        for i in range(config["n_layer"]):
            tensors[f"h.{i}.attn.bias"] = mask

    def old_style(tensors, config):
        for i in range(config["n_layer"]):
            tensors[f"transformer.h.{i}.attn.bias"] = mask
            tensors[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)

    ids = np.random.default_rng(0).integers(0, 97, (1, 50))
    expected = nanollm.load(gpt2_dir).forward(ids)
    for name, edit in [("hub", hub_style), ("old", old_style)]:
        variant = rewrite(gpt2_dir, tmp_path / name, edit)
        names = set(open_checkpoint(variant).keys())
        assert ("h.0.attn.bias" in names) == (name == "hub")
        np.testing.assert_array_equal(nanollm.load(variant).forward(ids), expected)


@pytest.mark.parametrize("edit, message", [
    (lambda t, c: c.update(model_type="bert"), "unknown architecture model_type='bert'"),
    (lambda t, c: c.pop("n_head"), "missing required key 'n_head'"),
    (lambda t, c: c.update(activation_function="relu"), "activation_function='relu'"),
    (lambda t, c: t.pop("transformer.h.1.mlp.c_fc.weight"), "missing tensor 'transformer.h.1.mlp.c_fc.weight'"),
    (lambda t, c: t.update({"transformer.wpe.weight": np.zeros((10, 32), np.float32)}),
     "tensor 'transformer.wpe.weight' has shape (10, 32), config.json implies (160, 32)"),
    (lambda t, c: t.update({"transformer.h.0.attn.q_norm.weight": np.ones(8, np.float32)}),
     "does not know how to use: ['transformer.h.0.attn.q_norm.weight']"),
    (lambda t, c: c.update(n_embd=48), "has shape"),
    (lambda t, c: c.update(n_head=0), "n_head must be an integer >= 1, got 0"),
    (lambda t, c: c.update(n_head=3), "n_embd=32 is not a multiple of n_head=3"),
    (lambda t, c: c.update(n_layer=-1), "n_layer must be an integer >= 1, got -1"),
    (lambda t, c: c.update(vocab_size=[97]), "vocab_size must be an integer >= 1, got [97]"),
    (lambda t, c: c.update(layer_norm_epsilon=0), "layer_norm_epsilon must be a finite number > 0, got 0"),
])
def test_bad_gpt2_checkpoints_fail_clearly(tmp_path, gpt2_dir, edit, message):
    bad = rewrite(gpt2_dir, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError) as e:
        nanollm.load(bad)
    assert message in str(e.value) and str(bad) in str(e.value)


@pytest.mark.parametrize("edit, message", [
    (lambda t, c: c.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}),
     "rope_parameters.rope_type is 'yarn', which is not supported"),
    (lambda t, c: c.update(num_key_value_heads=3), "num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
    (lambda t, c: t.pop("lm_head.weight"), "missing tensor 'lm_head.weight'"),
])
def test_bad_llama_checkpoints_fail_clearly(tmp_path, llama_dir, edit, message):
    def untie_then_edit(tensors, config):
        config["tie_word_embeddings"] = False
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
        edit(tensors, config)

    bad = rewrite(llama_dir, tmp_path / "bad", untie_then_edit)
    with pytest.raises(ValueError) as e:
        nanollm.load(bad)
    assert message in str(e.value)


def test_missing_and_corrupt_config(tmp_path, gpt2_dir):
    with pytest.raises(CheckpointError, match="no config.json"):
        nanollm.load(tmp_path)
    broken = rewrite(gpt2_dir, tmp_path / "broken", lambda t, c: None)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        nanollm.load(broken)
    (broken / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json: expected a JSON object"):
        nanollm.load(broken)


@pytest.mark.parametrize("content, message", [
    ("{not json", "generation_config.json: not valid JSON"),
    ("[1, 2]", "generation_config.json: expected a JSON object"),
    (b"\xff\xfe{}", "generation_config.json: not valid JSON"),
])
def test_corrupt_generation_config(tmp_path, gpt2_dir, content, message):
    broken = rewrite(gpt2_dir, tmp_path / "broken", lambda t, c: None)
    target = broken / "generation_config.json"
    target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    with pytest.raises(CheckpointError, match=message):
        nanollm.load(broken)


def test_bad_inputs_to_a_loaded_model(gpt2_dir):
    model = nanollm.load(gpt2_dir)
    with pytest.raises(ValueError, match="exceeds the model's context of 160"):
        model.generate([5] * 150, max_new_tokens=20, temperature=0)
    with pytest.raises(ValueError, match="161 tokens exceed the model's context of 160"):
        model.forward(np.zeros((1, 161), dtype=np.int64))
    with pytest.raises(ValueError, match="token id 97 is outside the vocabulary"):
        model.forward([[1, 97]])
    with pytest.raises(ValueError, match="non-empty int array"):
        model.forward(np.zeros((1, 0), dtype=np.int64))
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        model.generate([1, 2], temperature=-1)
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        nanollm.load(gpt2_dir, backend="tpu")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "nanollm.generate", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_generates_the_api_greedy_ids(gpt2_dir):
    out = run_cli("--model", str(gpt2_dir), "--prompt-ids", "5,6,7", "--max-new-tokens", "12", "--temperature", "0",
                  "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    expected = nanollm.load(gpt2_dir).generate([5, 6, 7], max_new_tokens=12, temperature=0)
    assert got["token_ids"] == expected.token_ids
    assert got["stats"]["prompt_tokens"] == 3 and got["stats"]["new_tokens"] == len(expected.token_ids)


@pytest.mark.parametrize("args, message", [
    (["--model", "{missing}", "--prompt-ids", "1"], "no config.json"),
    (["--model", "{gpt2}", "--prompt-ids", "1,x"], "--prompt-ids must be comma-separated integers"),
    (["--model", "{gpt2}", "--prompt-ids", "1", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--model", "{gpt2}", "--prompt-ids", "1,2,3,4,5,6,7,8,9,10,11", "--max-new-tokens", "150"],
     "prompt of 11 tokens + 150 new tokens = 161 exceeds the model's context of 160 "
     "tokens (--keep-recent keeps the most recent 10)"),
    (["--model", "{gpt2}", "--prompt-ids", "1", "--max-new-tokens", "1000000000"],
     "--max-new-tokens 1000000000 leaves no room for a prompt in the model's context of 160 tokens (at most 159 new"),
    (["--model", "{gpt2}", "--prompt-ids", "1", "--max-new-tokens", "many"], "invalid int value"),
])
def test_cli_errors_are_one_line(tmp_path, gpt2_dir, args, message):
    """One line naming the problem, in the command line's terms: flags, not generate()'s option names."""
    args = [a.format(missing=tmp_path / "nothing", gpt2=gpt2_dir) for a in args]
    (tmp_path / "nothing").mkdir()
    out = run_cli(*args)
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
