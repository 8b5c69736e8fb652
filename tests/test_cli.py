"""`python -m nanollm.generate` run as a user runs it (a subprocess), checked against the Python API in-process.

The interactive `--chat` loop reads piped stdin: two user turns, then end of input. Each reply must be what the API
produces for the conversation so far, and the prompt-token report must show the resent history growing.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

import nanollm
from nanollm.chat import chat_template_for, turn_end_ids
from nanollm.request import eos_ids
from tests.conftest import PROJECT_ROOT
from tests.generation_fixtures import write_family, write_gpt2_tokenizer_files
from tests.hf_models import Options, build_checkpoint


def cli(*args, stdin=None, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run([sys.executable, "-m", "nanollm.generate", *args], input=stdin, capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def ids_model(tmp_path_factory):
    """A tiny GPT-2 without tokenizer files (vocabulary 97, context 160)."""
    directory = tmp_path_factory.mktemp("ids")
    build_checkpoint(directory, Options(arch="gpt2", seed=3))
    return directory


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A random-weight GPT-2 with the real GPT-2 tokenizer files (no chat template: the plain fallback)."""
    directory = tmp_path_factory.mktemp("text")
    build_checkpoint(directory, Options(arch="gpt2", vocab_size=50257, seed=2, init_std=0.3))
    write_gpt2_tokenizer_files(directory)
    return directory


def test_prompt_ids_json_equals_the_api(ids_model, tmp_path):
    out = cli("--model", str(ids_model), "--prompt-ids", "3,4,5", "--max-new-tokens", "12", "--temperature", "0",
              "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    expected = nanollm.load(ids_model).generate([3, 4, 5], max_new_tokens=12, temperature=0)
    assert got["token_ids"] == expected.token_ids and got["text"] is None
    assert {"ttft_s", "tpot_s", "tpot_p50_s", "tpot_p90_s", "tokens_per_s", "prefill_tokens_per_s",
            "peak_memory_bytes", "kv_cache_bytes", "prompt_tokens", "new_tokens"} <= set(got["stats"])


def test_streams_the_text_and_prints_stats(text_model, tmp_path):
    out = cli("--model", str(text_model), "--max-new-tokens", "10", "--temperature", "0", "--stats", "Hello there",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == nanollm.load(text_model).generate("Hello there", max_new_tokens=10, temperature=0).text + "\n"
    assert all(word in out.stderr for word in ("TTFT", "p50", "p90", "tokens/s", "peak memory", "KV cache"))


def test_a_batch_from_flags_and_a_file(text_model, tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("The sky\nOnce upon a time, in a land\n", encoding="utf-8")
    out = cli("--model", str(text_model), "--prompt", "Paris is", "--prompts-file", str(prompts_file),
              "--max-new-tokens", "6", "--temperature", "0", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    model = nanollm.load(text_model)
    expected = [model.generate(p, max_new_tokens=6, temperature=0) for p in
                ["Paris is", "The sky", "Once upon a time, in a land"]]
    assert [r["token_ids"] for r in results] == [e.token_ids for e in expected]
    assert [r["text"] for r in results] == [e.text for e in expected]


def test_show_probs_prints_every_stage_then_the_text(text_model, tmp_path):
    """Each step's stages on stdout, K tokens each, the token generated marked, tokens top-k cut written "cut";
    then the text, whole, after them (never interleaved with a stream)."""
    args = ("--model", str(text_model), "--max-new-tokens", "4", "--temperature", "0.8", "--top-k", "2", "--seed",
            "1", "Paris is the city")
    out = cli(*args, "--show-probs", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    blocks = out.stdout.split("step ")[1:]
    assert len(blocks) == 4
    for block in blocks:
        stages = [line.split()[0] for line in block.splitlines()[1:] if line.startswith("  ")]
        assert stages == ["logits", "/", "top-k", "probabilities", "draw"], block
        probabilities = next(line for line in block.splitlines() if line.strip().startswith("probabilities"))
        assert probabilities.count(" cut") == 1 and " <" in probabilities  # top-k 2 of 3 shown; the chosen marked
    text = out.stdout.split("text:\n", 1)[1]
    plain = cli(*args, cwd=tmp_path)
    assert text == plain.stdout  # the same tokens as without --show-probs


def test_no_kv_cache_gives_the_same_text(text_model, tmp_path):
    args = ("--model", str(text_model), "--max-new-tokens", "8", "--temperature", "0.7", "--seed", "5", "Hello")
    cached, recomputed = cli(*args, cwd=tmp_path), cli(*args, "--no-kv-cache", "--stats", cwd=tmp_path)
    assert cached.returncode == recomputed.returncode == 0, recomputed.stderr
    assert cached.stdout == recomputed.stdout and "TPOT" in recomputed.stderr


def test_a_batch_reports_each_sequence_and_the_batch_together(ids_model, tmp_path):
    out = cli("--model", str(ids_model), "--prompt-ids", "1,2", "--prompt-ids", "3,4,5", "--max-new-tokens", "3",
              "--temperature", "0", "--stats", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert [line[:3] for line in lines if line.startswith("[")] == ["[0]", "[1]"]
    assert any(line.startswith("batch of 2: 6 new tokens") and "tokens/s together" in line for line in lines)


def test_errors_name_the_flags_not_the_api_options(text_model, tmp_path):
    long = " ".join(["word"] * 200)
    out = cli("--model", str(text_model), "--max-new-tokens", "100", long, cwd=tmp_path)
    assert out.returncode == 1 and "--keep-recent keeps the most recent" in out.stderr, out.stderr
    out = cli("--model", str(text_model), "--max-new-tokens", "5000", "x", cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.startswith("error: --max-new-tokens 5000 leaves no room"), out.stderr
    out = cli("--model", str(text_model), "--top-p", "2", "x", cwd=tmp_path)
    assert out.stderr.strip() == "error: --top-p must be in (0, 1], got 2.0"


def test_beam_search_and_sampling_flags(ids_model, tmp_path):
    out = cli("--model", str(ids_model), "--prompt-ids", "7,8,9", "--max-new-tokens", "8", "--temperature", "0",
              "--num-beams", "3", "--length-penalty", "0.5", "--early-stopping", "true", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    expected = nanollm.load(ids_model).generate([7, 8, 9], max_new_tokens=8, temperature=0, num_beams=3,
                                                length_penalty=0.5, early_stopping=True, return_beams=True)
    assert got["token_ids"] == expected.token_ids and len(got["beams"]) == 3
    out = cli("--model", str(ids_model), "--prompt-ids", "7,8,9", "--max-new-tokens", "8", "--temperature", "0.9",
              "--top-p", "0.9", "--min-p", "0.05", "--repetition-penalty", "1.2", "--presence-penalty", "0.3",
              "--frequency-penalty", "0.2", "--logit-bias", "5=-100", "--min-new-tokens", "3", "--seed", "4",
              "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    expected = nanollm.load(ids_model).generate(
        [7, 8, 9], max_new_tokens=8, temperature=0.9, top_p=0.9, min_p=0.05, repetition_penalty=1.2,
        presence_penalty=0.3, frequency_penalty=0.2, logit_bias={5: -100.0}, min_new_tokens=3, seed=4)
    assert json.loads(out.stdout)["token_ids"] == expected.token_ids and 5 not in expected.token_ids


def test_keep_recent_keeps_the_most_recent_window(ids_model, tmp_path):
    long_prompt = ",".join(str(3 + i % 90) for i in range(158))
    out = cli("--model", str(ids_model), "--prompt-ids", long_prompt, "--max-new-tokens", "5", "--json",
              cwd=tmp_path)
    assert out.returncode == 1 and "exceeds the model's context" in out.stderr
    out = cli("--model", str(ids_model), "--prompt-ids", long_prompt, "--max-new-tokens", "5", "--keep-recent",
              "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stats"]["prompt_tokens"] == 155


@pytest.mark.parametrize("args, status", [
    (["--prompt-ids", "1,2", "--max-new-tokens", "many"], 2),
    (["--prompt-ids", "1,x"], 2),
    (["--prompt-ids", "1,2", "--bogus"], 2),
    (["--prompt-ids", "1,2", "--temperature", "-1"], 1),
    (["--prompt-ids", "1,2", "--top-p", "0"], 1),
    (["--prompt-ids", "1,2", "--logit-bias", "5"], 2),
    (["--prompt-ids", "1,2", "--temperature", "0", "--num-beams", "2", "--stop", "x"], 1),
    (["--prompt-ids", "1,2", "--temperature", "0", "--num-beams", "2", "--show-probs", "2"], 1),
    (["--chat", "--prompt-ids", "1,2"], 2),
    ([], 2),
    (["--prompt-ids", "1,2", "--trace", "--show-probs", "2"], 2),  # two views on one stdout
    (["--prompt-ids", "1,2", "--trace", "-1"], 2),
    (["--chat", "--show-attention", "0"], 2),
    (["--prompt-ids", "1,2", "--show-attention", "1:x"], 2),
    (["--prompt-ids", "1,2", "--show-attention", "7"], 1),  # the model has 2 layers
    (["--prompt-ids", "1,2", "--show-attention", "0:9"], 1),  # ... and 4 heads
    (["--prompt-ids", "1,2", "--show-attention", "0", "--temperature", "0", "--num-beams", "2"], 1),
    (["--prompt-ids", "1,2", "--prompt-ids", "3", "--trace"], 1),  # a view follows one prompt, not a batch
    (["--prompt-ids", "1,2", "--plot", "x.png"], 2),  # a picture of what? (--show-attention or --stats)
    (["--prompt-ids", "1,2", "--stats", "--plot", "no/such/dir/x.png"], 1),
])
def test_bad_flags_exit_with_one_line(ids_model, tmp_path, args, status):
    out = cli("--model", str(ids_model), *args, cwd=tmp_path)
    assert out.returncode == status
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_an_eos_id_outside_the_vocabulary_is_a_warning_and_ignored(ids_model, tmp_path):
    """generation_config.json names EOS 99999 in a vocabulary of 97 (as every GPT2Config(vocab_size=N) keeps 50256).
    transformers loads such a model with a warning and never meets that id; so does nanollm: one warning line that
    names the file and the id, then generation runs to max_new_tokens."""
    model_dir = tmp_path / "model"
    shutil.copytree(ids_model, model_dir)
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": 99999, "min_new_tokens": 1}),
                                                      encoding="utf-8")
    out = cli("--model", str(model_dir), "--prompt-ids", "1,2", "--max-new-tokens", "3", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["token_ids"]) == 3
    warning, note = out.stderr.strip().splitlines()
    assert warning.startswith("warning: ") and "generation_config.json" in warning and "99999" in warning
    # and what the file decides that no flag overrides is said, not left for the user to find
    assert note == "note: generation_config.json sets min_new_tokens=1 (a flag overrides each)"


@pytest.mark.parametrize("flag, value", [("--seed", "-1"), ("--show-probs", "-3")])
def test_a_negative_seed_or_show_probs_is_refused_naming_the_flag(ids_model, tmp_path, flag, value):
    """--seed -1 used to print NumPy's "expected non-negative integer" without naming the flag; --show-probs -3 was
    silently ignored."""
    out = cli("--model", str(ids_model), "--prompt-ids", "1,2", "--max-new-tokens", "2", flag, value, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith(f"error: {flag} "), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_bad_model_exits_with_one_line(tmp_path):
    out = cli("--model", str(tmp_path / "missing"), "--prompt-ids", "1,2", cwd=tmp_path)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_chat_through_piped_stdin(text_model, tmp_path):
    """Two turns then end of input. Expected replies come from the API with the same template, end tokens and
    stop string; the second turn's prompt holds the whole first exchange, so its token count is larger."""
    out = cli("--model", str(text_model), "--chat", "--system", "Be brief.", "--max-new-tokens", "8",
              "--temperature", "0", stdin="Hi there\nWhat next?\n", cwd=tmp_path)
    assert out.returncode == 0, out.stderr

    model = nanollm.load(text_model)
    template = chat_template_for(model.tokenizer)
    assert template.name == "plain"  # GPT-2 files have no chat template and no chat special tokens
    messages = [{"role": "system", "content": "Be brief."}]
    replies, prompt_sizes = [], []
    for user in ["Hi there", "What next?"]:
        messages.append({"role": "user", "content": user})
        ids = template.encode(model.tokenizer, messages)
        r = model.generate(ids, max_new_tokens=8, temperature=0, stop=template.stop,
                           eos_token_ids=eos_ids(model) | turn_end_ids(model.tokenizer))
        messages.append({"role": "assistant", "content": r.text})
        replies.append(r.text)
        prompt_sizes.append(len(ids))
    assert out.stdout == "".join(reply + "\n" for reply in replies)
    reported = [int(line.split("prompt ")[1].split()[0]) for line in out.stderr.splitlines()
                if line.startswith("[turn")]
    assert reported == prompt_sizes and reported[1] > reported[0]


def test_chat_with_the_model_template_stops_at_the_turn_end_token(tmp_path_factory, tmp_path):
    """A ChatML model (template in tokenizer_config.json, rendered by jinja2): <|im_end|> (id 50258) is pushed up
    by a logit bias, and min_new_tokens holds it back for 2 tokens, so each reply is 2 tokens and then the turn ends
    on <|im_end|>, which is never printed."""
    directory = tmp_path_factory.mktemp("chatml")
    build_checkpoint(directory, Options(arch="gpt2", vocab_size=50259, seed=4, init_std=0.3))
    write_family(directory, "chatml")
    out = cli("--model", str(directory), "--chat", "--max-new-tokens", "6", "--temperature", "0",
              "--min-new-tokens", "2", "--logit-bias", "50258=50", stdin="Hi\nAnd now?\n", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "chat (jinja template)" in out.stderr
    turns = [line for line in out.stderr.splitlines() if line.startswith("[turn")]
    assert len(turns) == 2 and all("3 new, eos" in line for line in turns)

    model = nanollm.load(directory)
    template = chat_template_for(model.tokenizer)
    messages, replies = [], []
    for user in ["Hi", "And now?"]:
        messages.append({"role": "user", "content": user})
        ids = template.encode(model.tokenizer, messages)
        r = model.generate(ids, max_new_tokens=6, temperature=0, min_new_tokens=2, logit_bias={50258: 50.0},
                           eos_token_ids=eos_ids(model) | turn_end_ids(model.tokenizer))
        assert r.token_ids[-1] == 50258 and len(r.token_ids) == 3
        messages.append({"role": "assistant", "content": r.text})
        replies.append(r.text)
    assert out.stdout == "".join(reply + "\n" for reply in replies) and "<|im_end|>" not in out.stdout



# -- input the CLI reads itself: every failure is one line, at once ---------------------------------------------------

def one_line_error(out, *words):
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert all(w in out.stderr for w in words), out.stderr


def test_a_prompts_file_that_is_not_utf8_or_not_a_file_is_one_line(ids_model, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    one_line_error(cli("--model", str(ids_model), "--prompts-file", str(bad), cwd=tmp_path), "latin1.txt", "UTF-8")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # open() would wait for a writer forever; cli() would time out after 120 s
    one_line_error(cli("--model", str(ids_model), "--prompts-file", str(fifo), cwd=tmp_path), "FIFO")
    one_line_error(cli("--model", str(ids_model), "--prompts-file", str(tmp_path / "none"), cwd=tmp_path), "none")


def test_chat_with_stdin_closed_or_not_utf8_is_one_line(text_model, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    closed = subprocess.run([sys.executable, "-m", "nanollm.generate", "--model", str(text_model), "--chat"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=120, preexec_fn=lambda: os.close(0))
    one_line_error(closed, "standard input", "closed")
    latin1 = subprocess.run([sys.executable, "-m", "nanollm.generate", "--model", str(text_model), "--chat"],
                            input="caf\xe9\n".encode("latin-1"), capture_output=True, env=env, cwd=tmp_path,
                            timeout=120)
    latin1.stderr = latin1.stderr.decode()
    assert latin1.returncode == 1 and latin1.stderr.splitlines()[-1].startswith("error: standard input is not UTF-8")


def test_chat_with_a_hostile_template_is_one_line(tmp_path_factory, tmp_path):
    directory = tmp_path_factory.mktemp("hostile")
    build_checkpoint(directory, Options(arch="gpt2", vocab_size=50259, seed=4))
    write_family(directory, "chatml")
    (directory / "chat_template.jinja").write_text("{{ 'x' * 10**10 }}", encoding="utf-8")  # wins over the config's
    out = cli("--model", str(directory), "--chat", stdin="Hi\n", cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.splitlines()[-1] == "error: the chat template needed more than 1024 " \
                                                                  "MiB of memory", out.stderr


def test_chat_show_prompt_prints_the_whole_conversation_each_turn(text_model, tmp_path):
    """The model keeps nothing between turns: --show-prompt prints the template's text and its ids, and the second
    turn's holds the first exchange."""
    out = cli("--model", str(text_model), "--chat", "--show-prompt", "--max-new-tokens", "3", "--temperature", "0",
              stdin="Hi there\nAnd then?\n", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    model = nanollm.load(text_model)
    template = chat_template_for(model.tokenizer)
    first = [{"role": "user", "content": "Hi there"}]
    assert template.render(first) in out.stderr
    shown = [line.split("] ", 1)[1] for line in out.stderr.splitlines() if line.startswith("[its tokens]")]
    assert shown[0] == " ".join(map(str, template.encode(model.tokenizer, first)))
    assert len(shown) == 2 and len(shown[1].split()) > len(shown[0].split())


def test_trace_prints_every_stage_then_the_text_generate_gives(text_model, tmp_path):
    args = ("--model", str(text_model), "--temperature", "0", "Hello there")
    out = cli(*args, "--trace", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    trace, text = out.stdout.split("\ntext:\n")
    ids = nanollm.load(text_model).tokenizer.encode("Hello there")
    assert trace.startswith(f"tokenize: {len(ids)} tokens")
    headers = [line.split(":")[0] for line in trace.splitlines() if line.startswith(("prefill", "decode step"))]
    assert headers == ["prefill", "decode step 1", "decode step 2"]
    assert f"ids (B, T) = (1, {len(ids)})" in trace and "logits to host" in trace and "GB/s achieved" in trace
    # by default the prefill and two decode steps choose 3 tokens: the same text as generating 3 tokens plainly
    assert text == nanollm.load(text_model).generate("Hello there", max_new_tokens=3, temperature=0).text + "\n"


def test_show_attention_prints_the_map_the_library_computes(text_model, tmp_path):
    from nanollm.views.attention import attention_maps, format_attention

    out = cli("--model", str(text_model), "--max-new-tokens", "5", "--temperature", "0", "--show-attention", "1:0",
              "Hello there", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    shown, text = out.stdout.split("\ntext:\n")
    expected = attention_maps(nanollm.load(text_model), "Hello there", 1, 0, max_new_tokens=5, temperature=0)
    assert shown == format_attention(expected)
    assert text == expected.result.text + "\n"


def png_size(path) -> tuple[int, int]:
    """A PNG's (width, height), read from its IHDR chunk: the file must start as every PNG does."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("view", [["--show-attention", "0"], ["--stats", "--no-kv-cache"]])
def test_plot_writes_a_png(text_model, tmp_path, view):
    pytest.importorskip("matplotlib", reason="--plot draws with matplotlib, the viz extra (installed with test)")
    out = cli("--model", str(text_model), "--max-new-tokens", "6", "--temperature", "0", *view, "--plot",
              "picture.png", "Hello there", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "wrote picture.png" in out.stderr
    width, height = png_size(tmp_path / "picture.png")
    assert width >= 400 and height >= 300


def test_plot_without_matplotlib_says_how_to_install_it_before_any_work(text_model, tmp_path):
    """A matplotlib that cannot be imported (a package that raises ImportError, found first on the path)."""
    blocked = tmp_path / "blocked" / "matplotlib"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('matplotlib is blocked for this test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked.parent), str(PROJECT_ROOT)]))
    out = subprocess.run([sys.executable, "-m", "nanollm.generate", "--model", str(text_model), "--stats", "--plot",
                          "picture.png", "Hello"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 1 and out.stdout == ""  # nothing generated: the error comes first
    assert out.stderr.strip().splitlines() == [
        "error: plots need matplotlib, which is not installed: pip install 'nanollm[viz]' (or pip install matplotlib)"]
    assert not (tmp_path / "picture.png").exists()


def test_speculative_flags_give_the_api_tokens_and_report_acceptance(ids_model, tmp_path):
    """--prompt-lookup and --assistant-model (here the model itself, loaded from its folder) print plain greedy's
    ids; --json carries the proposed and accepted counts the API reports, --stats prints them."""
    model = nanollm.load(ids_model)
    plain = model.generate([3, 4, 5, 3, 4, 5, 3, 4], max_new_tokens=12, temperature=0)
    for flags, proposer in ((["--prompt-lookup", "3", "--max-matching-ngram", "2"], "prompt lookup"),
                            (["--assistant-model", str(ids_model), "--num-assistant-tokens", "4"],
                             "assistant model")):
        out = cli("--model", str(ids_model), "--prompt-ids", "3,4,5,3,4,5,3,4", "--max-new-tokens", "12",
                  "--temperature", "0", "--json", *flags, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got["token_ids"] == plain.token_ids
        stats = got["stats"]
        assert stats["proposer"] == proposer and 0 < stats["accepted_tokens"] <= stats["proposed_tokens"]
        assert stats["acceptance_rate"] == stats["accepted_tokens"] / stats["proposed_tokens"]
    out = cli("--model", str(ids_model), "--prompt-ids", "3,4,5,3,4,5,3,4", "--max-new-tokens", "12",
              "--temperature", "0", "--stats", "--assistant-model", str(ids_model), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # the first token from the prefill; 5 proposals (the default) + 1, then 4 + 1: room for 12 tokens, no more
    assert "assistant model: proposed 9, accepted 9 (acceptance rate 1.00)" in out.stderr


@pytest.mark.parametrize("flags, words", [
    (["--prompt-lookup", "0"], ("--prompt-lookup must be a whole number >= 1",)),
    (["--prompt-lookup", "2", "--no-kv-cache"], ("--prompt-lookup 2", "--no-kv-cache")),
    (["--prompt-lookup", "2", "--num-beams", "2"], ("--prompt-lookup 2", "--num-beams 2")),
    (["--prompt-lookup", "2", "--prompt-ids", "1,2"], ("--prompt-lookup 2", "a batch of 2 prompts")),
    (["--assistant-model", "no/such/dir"], ("--assistant-model no/such/dir",)),
])
def test_what_speculative_decoding_refuses_is_one_line_naming_the_flags(ids_model, tmp_path, flags, words):
    out = cli("--model", str(ids_model), "--prompt-ids", "3,4,5", "--max-new-tokens", "4", *flags, cwd=tmp_path)
    one_line_error(out, *words)
