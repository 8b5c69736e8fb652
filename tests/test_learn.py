"""python -m nanollm.learn: every lesson runs offline, and the numbers it prints are right.

Each lesson is run once (offline: NANOLLM_OFFLINE=1, an empty temporary cache, and a socket that refuses to connect)
and its printed numbers are checked against values computed here independently: by hand with math.exp, or by the
reference library (transformers' GPT-2 on the same demo checkpoint, its GPT-2 tokenizer on GPT-2's files).
"""
import ast
import io
import json
import math
import re
import shutil
import socket
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2LMHeadModel

from nanollm.learn import LESSONS
from nanollm.learn.__main__ import main
from nanollm.learn.decoding import PROMPT as LESSON_PROMPT
from nanollm.learn.decoding import find_loop
from nanollm.loader import DEMO_MODEL
from nanollm.tokenizer import Tokenizer
from tests.conftest import PROJECT_ROOT, shared_file, time_limit
from weights_tools.hub import SNAPSHOT_MARKER

WORDS = ("closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you")
LOGITS = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]  # the 9-word vocabulary
GPT2_IDS = [15496, 11, 314, 1101, 281, 9552, 8796, 13]  # "Hello, I'm an AI assistant." (the numbers)
SECONDS_PER_LESSON = 30  # each takes well under 2 s on 2 cores; this only turns a hang into a failure


def softmax(values, temperature=1.0):
    """Softmax by the textbook formula in float64, independent of nanollm."""
    e = [math.exp(v / temperature) for v in values]
    return [x / sum(e) for x in e]


def floats(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", text)]


def offline(monkeypatch, cache) -> None:
    """No network (hub offline, connect refused), an empty cache, no GPT-2 folder unless a test names one."""
    monkeypatch.setenv("NANOLLM_OFFLINE", "1")
    monkeypatch.setenv("NANOLLM_CACHE", str(cache))
    monkeypatch.delenv("NANOLLM_GPT2_DIR", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a lesson reached for the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def run_lesson(argument: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), time_limit(SECONDS_PER_LESSON):
        status = main([argument])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def printed(tmp_path_factory):
    """lesson number -> what it printed; each lesson runs once, offline, on first use."""
    outputs = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        offline(monkeypatch, tmp_path_factory.mktemp("cache"))

        def output(number: int) -> str:
            if number not in outputs:
                status, out, err = run_lesson(str(number))
                assert status == 0 and err == "", err
                outputs[number] = out
            return outputs[number]

        yield output


@pytest.fixture(scope="module")
def reference():
    """transformers' GPT-2 on the demo checkpoint, float32, eager attention (so it can return the weights)."""
    return GPT2LMHeadModel.from_pretrained(DEMO_MODEL, dtype=torch.float32, attn_implementation="eager").eval()


def section(text: str, start: str, end: str | None = None) -> str:
    """The part of text from the line containing `start` up to the one containing `end`."""
    body = text[text.index(start):]
    return body[: body.index(end)] if end else body


# -- every lesson ------------------------------------------------------------------------------------------------

def test_there_are_at_least_ten_lessons_in_the_order_of_inference():
    titles = [lesson.title for lesson in LESSONS]
    assert len(titles) >= 10
    order = ["Tokens", "Embeddings", "Attention by hand", "Attention in the model", "KV cache", "Greedy",
             "Temperature", "Top-k", "draw", "Penalties", "Beam", "Chat", "TTFT"]
    positions = [next(i for i, t in enumerate(titles) if word in t) for word in order]
    assert positions == sorted(positions)


@pytest.mark.parametrize("number", range(1, len(LESSONS) + 1))
def test_each_lesson_runs_offline_and_names_a_function_to_read_next(printed, number):
    out = printed(number)
    lesson = LESSONS[number - 1]
    assert out.startswith(f"Lesson {number} of {len(LESSONS)}: {lesson.title}\n")
    assert 10 <= len(out.splitlines()) <= 60  # "a few dozen lines"
    last = out.rstrip().splitlines()[-1]
    assert last == lesson.read_next_line
    path, name = lesson.read_next
    tree = ast.parse((PROJECT_ROOT / path).read_text(encoding="utf-8"))
    scope = tree.body
    for part in name.split("."):  # "Batch.steps": a class, then its method
        found = [n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part]
        assert found, f"{path} defines no {name}"
        scope = found[0].body


def test_list_and_bad_numbers():
    status, out, err = run_lesson("--list")
    assert status == 0 and err == ""
    rows = [line for line in out.splitlines() if re.match(r"\s*\d+  ", line)]
    assert [int(r.split()[0]) for r in rows] == list(range(1, len(LESSONS) + 1))
    for bad in ("0", str(len(LESSONS) + 1), "two", "-1", "1.5"):
        status, out, err = run_lesson(bad)
        assert status == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith("error: ") and bad in err and "--list" in err


def test_the_module_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "nanollm.learn", "--list"], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, timeout=60)
    assert result.returncode == 0 and "Beam search" in result.stdout


# -- lesson 1: tokens ----------------------------------------------------------------------------------------------

def test_tokens_lesson_pieces_rejoin_and_says_how_to_see_gpt2(printed):
    out = printed(1)
    text = "Hello, I'm an AI assistant."
    rows = re.findall(r"^(\d+) ('.*'|\".*\"|b'.*')$", out, re.MULTILINE)
    demo = Tokenizer.from_pretrained(DEMO_MODEL)
    assert [int(i) for i, _ in rows] == demo.encode(text)
    assert "".join(ast.literal_eval(p) for _, p in rows) == text
    merges = re.findall(r"merge +\d+ +(\[.*\])", out)
    assert ast.literal_eval(merges[-1]) == [demo.decode([i]) for i in demo.encode(" assistant")]
    assert "GPT-2 ids" not in out and "NANOLLM_GPT2_DIR" in " ".join(out.split())


def gpt2_lesson(monkeypatch, tmp_path, **env) -> str:
    offline(monkeypatch, tmp_path / "cache")
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    status, out, err = run_lesson("1")
    assert status == 0 and err == "", err
    return out


def test_tokens_lesson_computes_gpt2_ids_from_a_folder(monkeypatch, tmp_path):
    folder = shared_file("tokenizers/gpt2")
    out = gpt2_lesson(monkeypatch, tmp_path, NANOLLM_GPT2_DIR=folder)
    ids = [int(i) for i in re.search(r"GPT-2 ids: ([\d ]+)", out).group(1).split()]
    reference = ByteLevelBPETokenizer(str(folder / "encoder.json"), str(folder / "vocab.bpe"), add_prefix_space=False)
    assert ids == GPT2_IDS == reference.encode("Hello, I'm an AI assistant.").ids


def test_tokens_lesson_finds_gpt2_in_the_hub_cache(monkeypatch, tmp_path):
    """A complete cached snapshot of gpt2 (the files plus the marker listing them) is used without the network."""
    snapshot = tmp_path / "cache" / "gpt2" / "main"
    snapshot.mkdir(parents=True)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(shared_file(f"tokenizers/gpt2/{name}"), snapshot / name)
    (snapshot / SNAPSHOT_MARKER).write_text(json.dumps({"files": ["encoder.json", "vocab.bpe"]}))
    out = gpt2_lesson(monkeypatch, tmp_path)
    assert f"GPT-2 ids: {' '.join(map(str, GPT2_IDS))}" in out and "hub cache" in out


def test_a_gpt2_folder_without_a_tokenizer_is_one_error_line(monkeypatch, tmp_path):
    offline(monkeypatch, tmp_path / "cache")
    monkeypatch.setenv("NANOLLM_GPT2_DIR", str(tmp_path))
    status, _, err = run_lesson("1")
    assert status == 1 and err.count("\n") == 1 and err.startswith("error: ") and str(tmp_path) in err


# -- lessons 2-4: vectors and attention -----------------------------------------------------------------------------

def test_positions_lesson_sinusoids_and_rope(printed):
    out = printed(2)
    for pos in range(4):
        row = floats(re.search(rf"PE\[{pos}, :6\] = (\[.*\])", out).group(1))
        expected = [f(pos / 10000 ** (2 * (j // 2) / 128)) for j, f in zip(range(6), [math.sin, math.cos] * 3)]
        assert row == pytest.approx(expected, abs=6e-5)
    flat = " ".join(out.split())
    dots = floats(re.search(r"PE\[p\] \. PE\[p\+5\] for p = 0, 10, 100: (\[[^]]*\])", flat).group(1))
    assert len(set(dots)) == 1
    assert float(re.search(r"1/10000\^\(2i/d\): max difference (\S+)", flat).group(1)) < 1e-6
    assert floats(re.search(r"first pair: (\[[^]]*\])", flat).group(1)) == pytest.approx([0.0, 1.0, 2.0], abs=1e-3)
    rotated = floats(re.search(r"p = 0, 10, 100: (\[[^]]*\]): only the offset", flat).group(1))
    assert len(set(rotated)) == 1


def test_attention_by_hand_lesson(printed):
    out = printed(3)
    """The lesson's three tokens, worked out here with lists: scores q.k / sqrt(2), keys after the query dropped."""
    queries, keys, values = [[1, 0], [0, 2], [1, 1]], [[1, 0], [0, 1], [1, 1]], [[10, 0], [0, 10], [5, 5]]
    weights = [softmax([(q[0] * k[0] + q[1] * k[1]) / math.sqrt(2) for k in keys[: t + 1]]) + [0.0] * (2 - t)
               for t, q in enumerate(queries)]
    outputs = [[sum(w[j] * values[j][c] for j in range(3)) for c in range(2)] for w in weights]
    masked = section(out, "2. Causal mask", "3. Output")
    mixed = section(out, "3. Output", "NumpyBackend")
    for t in range(3):
        assert floats(re.search(rf"token {t}: (\[[^]]*\])", masked).group(1)) == pytest.approx(weights[t], abs=6e-4)
        assert floats(re.search(rf"token {t}: (\[[^]]*\])", mixed).group(1)) == pytest.approx(outputs[t], abs=6e-4)
    assert float(re.search(r"max difference (\S+)", section(out, "NumpyBackend")).group(1)) < 1e-5


def test_attention_in_the_model_matches_transformers(printed, reference):
    """The heat map's strongest key per token and its weight equal transformers' own attention weights of the
    same layer, averaged over heads."""
    out = printed(4)
    flat = " ".join(out.split())
    assert float(re.search(r"own output: max difference (\S+)", flat).group(1)) < 1e-4
    assert float(re.search(r"largest error (\S+)\)", flat).group(1)) < 1e-5
    assert "weights above the diagonal: 0.0" in flat
    layer = int(re.search(r"Layer (\d+), the", out).group(1))
    demo = Tokenizer.from_pretrained(DEMO_MODEL)
    ids = demo.encode("The for statement is used to iterate over the elements of a sequence")
    with torch.no_grad():
        attention = reference(torch.tensor([ids]), output_attentions=True).attentions[layer][0].mean(0).numpy()
    rows = re.findall(r"^  (.{12}) \|.*\| most: (.*) (\d\.\d\d)$", out, re.MULTILINE)
    assert len(rows) == len(ids)
    for t, (_, strongest, weight) in enumerate(rows):
        assert ast.literal_eval(strongest) == demo.decode([ids[int(np.argmax(attention[t]))]])
        assert float(weight) == pytest.approx(attention[t].max(), abs=6e-3)


# -- lessons 5-6: decoding -----------------------------------------------------------------------------------------

def test_kv_cache_lesson(printed):
    out = printed(5)
    flat = " ".join(out.split())
    assert "per token: 2 (k, v) x 4 layers x 4 heads x 32 x 4 bytes = 4,096 bytes" in flat  # 2*4*4*32*4
    assert float(re.search(r"all \d+ tokens: max difference (\S+)", flat).group(1)) < 1e-4
    assert "same tokens: True" in out
    totals = {name: float(s) for name, s in re.findall(r"(cache|recompute)\s*:.*total (\S+) s", out)}
    assert totals["recompute"] > totals["cache"]  # measured ~15x apart on 2 cores


def test_greedy_lesson_shows_the_loop_and_the_penalty_breaking_it(printed):
    out = printed(6)
    off = section(out, "repetition_penalty=1 (off)", "the file's repetition_penalty=1.3")
    text = ast.literal_eval(off.splitlines()[1])
    cycle = ast.literal_eval(re.search(r"repeats: (.*)$", off, re.MULTILINE).group(1))
    assert cycle * 2 in text
    assert "no repeating cycle" in section(out, "the file's repetition_penalty=1.3")
    assert "'repetition_penalty': 1.3" in out


def test_find_loop_docstring_example():
    assert find_loop([5, 1, 2, 3, 1, 2, 3, 1, 2]) == (1, 3)
    assert find_loop([1, 2, 3, 4]) is None


# -- lessons 7-9: choosing -----------------------------------------------------------------------------------------

def test_temperature_lesson(printed):
    out = printed(7)
    for i, word in enumerate(WORDS):
        row = floats(re.search(rf"^  {word} .*$", out, re.MULTILINE).group(0))
        expected = [LOGITS[i]] + [softmax(LOGITS, t)[i] for t in (1.0, 0.1, 5.0)]
        assert row == pytest.approx(expected, abs=6e-5)
    flat = " ".join(out.split())
    assert "softmax([0.1, 0.2, 0.3, 0.8]) = [0.187 0.207 0.229 0.377]" in flat
    assert [round(p, 3) for p in softmax([0.1, 0.2, 0.3, 0.8])] == [0.187, 0.207, 0.229, 0.377]


def kept_words(line: str) -> dict[str, float]:
    return {word: float(p) for word, p in re.findall(r"(\w+) (\d\.\d{4})", line)}


def test_filters_lesson(printed):
    out = " ".join(printed(8).split())
    p = softmax(LOGITS)
    order = sorted(range(9), key=lambda i: -p[i])
    top3 = order[:3]
    top_k = softmax([LOGITS[i] for i in top3])
    assert kept_words(re.search(r"top-k 3: .*? kept: (.*?) -- top-p", out).group(1)) == pytest.approx(
        {WORDS[i]: q for i, q in zip(top3, top_k)}, abs=6e-5)
    mass, nucleus = 0.0, []
    for i in order:  # transformers' rule: the smallest set whose mass reaches p, the crossing word included
        nucleus.append(i)
        mass += p[i]
        if mass >= 0.9:
            break
    assert kept_words(re.search(r"kept \(transformers' rule, nanollm's\): (.*?); mass", out).group(1)) == \
        pytest.approx({WORDS[i]: p[i] / mass for i in nucleus}, abs=6e-5)
    below = [WORDS[i] for k, i in enumerate(order) if sum(p[j] for j in order[: k + 1]) <= 0.9]
    dropped = re.search(r"cumulative <= p\): (.*?); mass (\S+) <", out)
    assert dropped.group(1).split(", ") == below == ["forward"]
    assert float(dropped.group(2)) == pytest.approx(p[3], abs=6e-5)
    min_p = [WORDS[i] for i in order if p[i] >= 0.1 * max(p)]
    assert list(kept_words(re.search(r"min-p 0.1: .*? kept: (.*?) --", out).group(1))) == min_p


def test_draw_lesson(printed):
    out = printed(9)
    probs = softmax([LOGITS[i] for i in (0, 3, 7)])  # top-k 3 kept closer, forward, toward (vocabulary order)
    cdf = np.cumsum(probs)
    expected = {u: ("closer", "forward", "toward")[int(np.searchsorted(cdf, u, side="right"))]
                for u in (0.05, 0.5, 0.7, 0.99)}
    flat = " ".join(out.split())
    assert {float(u): w for u, w in re.findall(r"u = ([\d.]+) -> (\w+)", flat)} == expected
    for word, drawn, prob in re.findall(r"(\w+) drawn (\S+) probability (\S+)", flat):
        assert float(drawn) == pytest.approx(float(prob), abs=0.02)  # 10,000 draws: 4 standard deviations
    us = [float(u) for u in re.findall(r"step \d+: u = (\S+) ->", flat)]
    assert us == pytest.approx(np.random.default_rng(7).random(8).tolist(), abs=6e-5)
    assert "the same tokens as model.generate: True" in flat


# -- lessons 10-13 -------------------------------------------------------------------------------------------------

def test_penalties_lesson(printed):
    out = printed(10)
    assert "apply_repetition_penalty -> [2.0 -8.0 2.0 1.0]" in out  # 4 / 2, -4 * 2, unseen kept
    assert "[2.75 -4.75 2.00 1.00]" in out  # 4 - 0.5 - 0.25 * 3, -4 - 0.5 - 0.25 * 1
    raw = re.search(r"raw logits, top 3: +(\S+)", out).group(1)
    penalised = re.search(r"after penalty 1.3, top 3: +(\S+)", out).group(1)
    assert raw != penalised
    reasons = re.findall(r"-> (length|stop|eos) +after +(\d+) tokens, last (.*?): (.*)$", out, re.MULTILINE)
    assert [r[0] for r in reasons] == ["length", "stop", "eos"]
    assert int(reasons[0][1]) == 30 and ast.literal_eval(reasons[1][2]) == " clause"
    assert " clause" not in ast.literal_eval(reasons[1][3]) and ast.literal_eval(reasons[2][2]) == "."
    assert not ast.literal_eval(reasons[2][3]).endswith(".")


def test_beam_lesson_matches_transformers(printed, reference):
    out = printed(11)
    scores = [float(s) for s in re.findall(r"^  score +(\S+) ", out, re.MULTILINE)]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    by_hand = re.search(r"= (\S+) \(beam search said (\S+)\)", out)
    assert float(by_hand.group(1)) == pytest.approx(float(by_hand.group(2)), abs=2e-4)
    best = ast.literal_eval(re.search(r"score +\S+ +(.*)$", out, re.MULTILINE).group(1))
    demo = Tokenizer.from_pretrained(DEMO_MODEL)
    ids = demo.encode("The for statement")
    with torch.no_grad():
        theirs = reference.generate(torch.tensor([ids]), num_beams=4, max_new_tokens=8, do_sample=False,
                                    repetition_penalty=1.0, length_penalty=1.0, early_stopping=False,
                                    pad_token_id=1023)[0, len(ids):].tolist()
    assert best == demo.decode([i for i in theirs if i != 1023])


def test_chat_lesson_resends_the_conversation(printed):
    out = printed(12)
    assert "<|im_start|>system\nYou answer from the Python documentation.<|im_end|>\n" in out
    lengths = [int(n) for n in re.findall(r"turn \d: the prompt is (\d+) tokens", out)]
    assert len(lengths) == 2 and lengths[1] > lengths[0]
    assert "it begins with turn 1's prompt and reply: True" in out


def test_numbers_lesson(printed, reference):
    out = printed(13)
    kv = re.search(r"KV cache +([\d,]+) bytes = .* x (\d+) positions x .* = ([\d,]+)", out)
    positions = len(Tokenizer.from_pretrained(DEMO_MODEL).encode(LESSON_PROMPT)) + 64
    assert int(kv.group(2)) == positions
    assert int(kv.group(1).replace(",", "")) == int(kv.group(3).replace(",", "")) == 2 * 4 * 4 * positions * 32 * 4
    parameters = sum(p.numel() for p in reference.parameters())  # tied head counted once, as in the file
    assert int(re.search(r"weights +([\d,]+) bytes", out).group(1).replace(",", "")) == 4 * parameters
    tpot = float(re.search(r"TPOT +(\S+) ms", out).group(1))
    rate = float(re.search(r"throughput +(\S+) tokens/s", out).group(1))
    assert tpot > 0 and 1000 / rate == pytest.approx(tpot, abs=0.0051)  # TPOT is printed to 0.01 ms
    assert float(re.search(r"TTFT +(\S+) ms", out).group(1)) > 0


def test_replay_lesson_counts_a_steps_calls_and_finds_the_replay_equal(printed):
    """The demo model (GPT-2's layout, 4 layers) makes 12 calls a layer (2 norms, 4 products, 2 cache writes,
    attention, 2 adds, GELU) and 2 after them (the final norm, the logits); the lesson counts them from a recording
    and compares replayed logits with Python's."""
    out = " ".join(printed(15).split())  # the prose, unwrapped
    calls = int(re.search(r"decode step makes (\d+) kernel calls", out).group(1))
    kinds = dict((name, int(n)) for n, name in re.findall(r"(\d+) (\w+_\w+)", out.split("kernel calls: ")[1]))
    assert calls == 12 * 4 + 2 == sum(kinds.values())
    assert kinds["linear_panels"] == 4 * 4 + 1 and kinds["attention_cached"] == 4 and kinds["write_slots"] == 8
    assert "equal bit for bit: True" in out and "at every one of the 40 steps: True" in out
    python_ms, replay_ms = (float(x) for x in re.search(r"from Python (\S+) ms, replayed (\S+) ms", out).groups())
    assert python_ms > 0 and replay_ms > 0
    assert "this runner recorded batch sizes [2]" in out and "(trusted: True)" in out
    assert "Every request's tokens equal the same traffic's run from Python: True" in out
