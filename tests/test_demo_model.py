"""The demo model shipped in nanollm/demo_model/ and the default-model fallback that leads to it.

The demo is what `python -m nanollm.generate "prompt"` runs on a machine with no network, so it must load with the
runtime dependencies alone (numpy, regex), be a real GPT-2 checkpoint (transformers reads it and agrees on the
logits), and keep producing the same greedy text: its continuation of a fixed prompt is pinned below.
"""
import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

import nanollm
from tests.conftest import PROJECT_ROOT
from nanollm.loader import DEMO_MODEL, default_model_path
from weights_tools.hub import SNAPSHOT_MARKER

PROMPT = "The for statement"
# Greedy (argmax at every step, no repetition penalty) continuation of PROMPT by the shipped weights: 24 new ids.
PINNED_IDS = [10, 386, 429, 853, 276, 114, 290, 831, 46, 10, 10, 10, 340, 268, 755, 34, 648, 115, 266, 268, 755, 34,
              648, 44]
PINNED_TEXT = 'The for statement\nexception handler is executed.\n\n\nThe "except" clauses the "except" clause,'


@pytest.fixture(scope="module")
def demo():
    return nanollm.load(DEMO_MODEL)


def greedy(model, ids, n):
    """Plain argmax decoding by full forward passes, independent of nanollm.generation. -> (new ids, min margin)"""
    ids, margins = list(ids), []
    for _ in range(n):
        logits = model.forward([ids])[0, -1]  # (V,)
        top2 = np.sort(logits)[-2:]
        margins.append(float(top2[1] - top2[0]))
        ids.append(int(np.argmax(logits)))
    return ids, min(margins)


def test_demo_files_and_size():
    d = DEMO_MODEL
    names = sorted(p.name for p in d.iterdir())
    assert names == ["README.md", "config.json", "generation_config.json", "model.safetensors",
                     "nanollm_tokenizer.json"]
    assert (d / "model.safetensors").stat().st_size < 4 * 2**20  # "a few MB at most"
    assert json.loads((d / "config.json").read_text())["model_type"] == "gpt2"


def test_demo_greedy_continuation_is_pinned(demo):
    """The ids and text are what the shipped weights produced when this test was written; the smallest gap between
    the best and second-best logit along the way is far above float32 rounding, so a BLAS that sums in another
    order still picks the same tokens."""
    prompt = demo.tokenizer.encode(PROMPT)
    ids, margin = greedy(demo, prompt, 24)
    assert ids[len(prompt):] == PINNED_IDS
    assert demo.tokenizer.decode(ids) == PINNED_TEXT
    assert margin > 1e-3


def test_demo_matches_transformers(demo):
    """The shipped checkpoint is a real GPT-2: transformers reads the same directory and gives the same logits
    (float16 storage, float32 compute on both sides; tolerance 1e-4 * max(1, max |logit|))."""
    reference = GPT2LMHeadModel.from_pretrained(DEMO_MODEL, dtype=torch.float32).eval()
    ids = demo.tokenizer.encode("def f(x):\n    return x + 1\n\nThe while statement is used")
    with torch.no_grad():
        theirs = reference(torch.tensor([ids])).logits.numpy()
    ours = demo.forward([ids])
    assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, float(np.abs(theirs).max()))


def run_python(code, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("NANOLLM_CACHE", "NANOLLM_OFFLINE")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          env=environment, timeout=120)


def test_demo_runs_with_numpy_and_regex_only():
    """Loading the demo and generating imports no third-party module but numpy and regex: no torch, no
    transformers, no tokenizers. (Modules whose name starts with "_" are interpreter/site internals, and
    cython_runtime is registered by numpy's compiled extensions.)"""
    code = """
import sys
import nanollm
from nanollm.loader import DEMO_MODEL
model = nanollm.load(DEMO_MODEL)
print(repr(model.generate("The if statement", max_new_tokens=8).text))
third_party = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names))
print(",".join(m for m in third_party if not m.startswith("_") and m != "cython_runtime"))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    text, modules = result.stdout.splitlines()[-2:]
    assert len(ast.literal_eval(text)) > 0
    assert modules.split(",") == ["nanollm", "numpy", "regex", "weights_tools"]


def test_offline_default_falls_back_to_demo_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOLLM_CACHE", str(tmp_path))
    monkeypatch.setenv("NANOLLM_OFFLINE", "1")
    assert default_model_path() == DEMO_MODEL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NANOLLM_OFFLINE" in err and "demo model" in err


def test_cached_gpt2_is_preferred(tmp_path, monkeypatch, capsys):
    """A complete snapshot of gpt2 in the cache (config.json + the marker listing it) is used, offline, silently."""
    snapshot = tmp_path / "gpt2" / "main"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / SNAPSHOT_MARKER).write_text(json.dumps({"files": ["config.json"]}))
    monkeypatch.setenv("NANOLLM_CACHE", str(tmp_path))
    monkeypatch.setenv("NANOLLM_OFFLINE", "1")
    assert default_model_path() == snapshot
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("no_network", [
    {"NANOLLM_OFFLINE": "1"},  # told not to use the network
    {"NANOLLM_HUB_URL": "http://127.0.0.1:9"},  # no NANOLLM_OFFLINE, but the hub cannot be reached (discard port)
])
def test_readme_run_command_without_network_produces_the_demo_text(tmp_path, no_network):
    """`python -m nanollm.generate "prompt"` with no --model, no network and an empty cache: one notice line on
    stderr, and the note on what the demo's generation_config.json decides; then exactly the demo model's own greedy
    continuation on stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "nanollm.generate", "--max-new-tokens", "12", "--temperature", "0",
         "The with statement"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
        env=dict(os.environ, NANOLLM_CACHE=str(tmp_path), **no_network),
    )
    assert result.returncode == 0, result.stderr
    notice, note = result.stderr.splitlines()
    assert "demo model" in notice and note == "note: generation_config.json sets repetition_penalty=1.3 (a flag " \
                                              "overrides each)"
    expected = nanollm.load(DEMO_MODEL).generate("The with statement", max_new_tokens=12, temperature=0)
    assert expected.text.strip() and result.stdout.rstrip("\n") == expected.text
