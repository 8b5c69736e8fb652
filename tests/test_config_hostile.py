"""Hostile config.json and generation_config.json values: each loads and generates, or is one CheckpointError that
names the file and the key. Never a TypeError, a ZeroDivisionError, NaN logits, or a value silently read as another.

Named cases come first, each with what transformers 5 (installed) does with the same config.json, checked here so
the comparison cannot drift: it refuses the same wrong JSON types (its config classes are @strict dataclasses) but
accepts nonsense ranges (0 layers, rope_theta -1, eps 0) and dies with ZeroDivisionError on num_attention_heads 0.
Then hypothesis fuzzes one key at a time with JSON values of every type and the extremes of each.
"""
import json
import os
import shutil
import warnings

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import nanollm
from nanollm.loader import FILE_OPTIONS, SPECIAL_IDS
from tests.conftest import time_limit
from tests.hf_models import Options, build_checkpoint
from weights_tools.convert import CheckpointError


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("gpt2"), Options(arch="gpt2"))[0]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    options = Options(arch="llama", n_kv_head=2, llama3_scaling=True)
    return build_checkpoint(tmp_path_factory.mktemp("llama"), options)[0]


def edited_copy(source, destination, file_name, edit):
    """A copy of the checkpoint directory with one JSON file changed by edit(dict)."""
    shutil.copytree(source, destination)
    data = json.loads((destination / file_name).read_text(encoding="utf-8"))
    edit(data)
    (destination / file_name).write_text(json.dumps(data), encoding="utf-8")  # NaN and Infinity as Python writes them
    return destination


def load_quietly(directory):
    """nanollm.load, with the warnings about special ids outside the vocabulary returned rather than shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = nanollm.load(directory)
    return model, [str(w.message) for w in caught]


def transformers_refuses(directory) -> bool:
    import transformers

    try:
        transformers.AutoConfig.from_pretrained(directory)
    except Exception:  # noqa: BLE001 (whatever transformers raises: a validation error, or ZeroDivisionError)
        return True
    return False


def setter(key, value):
    return lambda c: c.update({key: value})


def rope_setter(key, value):
    return lambda c: c["rope_parameters"].update({key: value})


NAN, INF = float("nan"), float("inf")

# (arch, edit, key the message names, what transformers 5 does with the same file)
CONFIG_CASES = [
    ("gpt2", setter("tie_word_embeddings", "false"), "tie_word_embeddings must be true or false", "refuses"),
    ("gpt2", setter("tie_word_embeddings", 0), "tie_word_embeddings must be true or false", "refuses"),
    ("gpt2", setter("n_layer", 2.5), "n_layer must be an integer >= 1, got 2.5", "refuses"),
    ("gpt2", setter("n_layer", 2.0), "n_layer must be an integer >= 1, got 2.0", "refuses"),
    ("gpt2", setter("n_layer", True), "n_layer must be an integer >= 1, got true", "refuses"),
    ("gpt2", setter("n_layer", "2"), "n_layer must be an integer >= 1, got \"2\"", "refuses"),
    ("gpt2", setter("n_layer", 0), "n_layer must be an integer >= 1, got 0", "accepts"),
    ("gpt2", setter("n_inner", 2**70), "n_inner must be an integer < 2**63", "accepts"),
    ("gpt2", setter("layer_norm_epsilon", -1e-5), "layer_norm_epsilon must be a finite number > 0", "accepts"),
    ("gpt2", setter("layer_norm_epsilon", NAN), "layer_norm_epsilon must be a finite number > 0, got NaN", "accepts"),
    ("gpt2", setter("layer_norm_epsilon", "1e-5"), "layer_norm_epsilon must be a finite number", "refuses"),
    ("gpt2", setter("eos_token_id", "2"), "eos_token_id must be a token id", "refuses"),
    ("gpt2", setter("eos_token_id", [1, 2.0]), "eos_token_id must be a token id", "refuses"),
    ("gpt2", setter("bos_token_id", [1]), "bos_token_id must be a token id (an integer) or null", "refuses"),
    ("gpt2", setter("activation_function", 1), "activation_function must be a string", "refuses"),
    ("gpt2", setter("scale_attn_weights", "yes"), "scale_attn_weights must be true or false", "refuses"),
    ("llama", setter("tie_word_embeddings", None), "tie_word_embeddings must be true or false, got null", "refuses"),
    ("llama", lambda c: c.update(num_attention_heads=0, head_dim=8), "num_attention_heads must be an integer >= 1",
     "refuses"),  # transformers: ZeroDivisionError, a traceback
    ("llama", setter("num_key_value_heads", 0), "num_key_value_heads must be an integer >= 1", "accepts"),
    ("llama", setter("head_dim", 2.5), "head_dim must be an integer >= 1", "refuses"),
    ("llama", setter("head_dim", 7), "head_dim=7 is odd", "refuses"),
    ("llama", setter("rms_norm_eps", 0.0), "rms_norm_eps must be a finite number > 0, got 0.0", "accepts"),
    ("llama", setter("attention_bias", "false"), "attention_bias must be true or false", "refuses"),
    ("llama", setter("rope_parameters", [1]), "rope_parameters must be a JSON object", "refuses"),
    ("llama", rope_setter("rope_theta", 0), "rope_parameters.rope_theta must be a finite number > 0, got 0",
     "accepts"),
    ("llama", rope_setter("rope_theta", -1.0), "rope_parameters.rope_theta must be a finite number > 0", "accepts"),
    ("llama", rope_setter("rope_theta", NAN), "rope_parameters.rope_theta must be a finite number > 0", "accepts"),
    ("llama", rope_setter("rope_theta", "1e4"), "rope_parameters.rope_theta must be a finite number", "accepts"),
    ("llama", rope_setter("rope_theta", 1e-300), "rope_theta=1e-300 with rope factor 8 gives RoPE frequencies",
     "accepts"),
    ("llama", rope_setter("factor", 0.0), "rope_parameters.factor must be a finite number > 0, got 0.0", "accepts"),
    ("llama", rope_setter("factor", -2.0), "rope_parameters.factor must be a finite number > 0", "accepts"),
    ("llama", rope_setter("factor", NAN), "rope_parameters.factor must be a finite number > 0, got NaN", "accepts"),
    ("llama", rope_setter("factor", INF), "rope_parameters.factor must be a finite number > 0, got Infinity",
     "accepts"),
    ("llama", rope_setter("low_freq_factor", 4.0), "high_freq_factor must be > low_freq_factor, got 4 <= 4",
     "accepts"),
    ("llama", rope_setter("original_max_position_embeddings", 32.0),
     "rope_parameters.original_max_position_embeddings must be an integer >= 1, got 32.0", "accepts"),
]


@pytest.mark.parametrize("arch, edit, message, transformers", CONFIG_CASES)
def test_bad_config_values_are_one_error_naming_the_file_and_the_key(tmp_path, gpt2_dir, llama_dir, arch, edit,
                                                                     message, transformers):
    source = gpt2_dir if arch == "gpt2" else llama_dir
    bad = edited_copy(source, tmp_path / "bad", "config.json", edit)
    with pytest.raises(CheckpointError) as e:
        nanollm.load(bad)
    assert str(e.value).startswith(f"{bad / 'config.json'}: ") and message in str(e.value)
    assert transformers_refuses(bad) == (transformers == "refuses")  # the comparison stated in CONFIG_CASES holds


GENERATION_CASES = [
    ("top_p", [1], "top_p must be a finite number, got [1]"),
    ("temperature", "hot", "temperature must be a finite number, got \"hot\""),
    ("eos_token_id", "2", "eos_token_id must be a token id (an integer), a list of them or null, got \"2\""),
    ("do_sample", "yes", "do_sample must be true or false, got \"yes\""),
    ("num_beams", 2.0, "num_beams must be an integer >= 1, got 2.0"),
    ("num_beams", "2", "num_beams must be an integer >= 1, got \"2\""),
    ("early_stopping", 1, "early_stopping must be true or false or \"never\", got 1"),
    ("early_stopping", "sometimes", "early_stopping must be true or false or \"never\""),
    ("length_penalty", NAN, "length_penalty must be a finite number, got NaN"),
    ("top_k", -1, "top_k must be an integer >= 0, got -1"),
    ("min_new_tokens", 1.5, "min_new_tokens must be an integer >= 0, got 1.5"),
    # well-typed values out of range: the messages of generate()'s own argument checks, naming the file
    ("top_p", 1.5, "top_p must be in (0, 1], got 1.5"),
    ("temperature", -1.0, "temperature must be >= 0 (0 is greedy), got -1.0"),
    ("repetition_penalty", 0.0, "repetition_penalty must be > 0"),
    ("min_p", 2, "min_p must be in [0, 1]"),
]


@pytest.mark.parametrize("key, value, message", GENERATION_CASES)
def test_bad_generation_config_values_fail_at_load_naming_the_file_and_the_key(tmp_path, gpt2_dir, key, value,
                                                                               message):
    """Each used to load, and then fail at generate (TypeError, or a ValueError not naming the file) or never."""
    bad = edited_copy(gpt2_dir, tmp_path / "bad", "generation_config.json", setter(key, value))
    with pytest.raises(CheckpointError) as e:
        nanollm.load(bad)
    assert str(e.value).startswith(f"{bad / 'generation_config.json'}: ") and message in str(e.value)


# -- fuzzing ---------------------------------------------------------------------------------------------------------

DELETE = object()  # the edit that removes the key
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 9), st.sampled_from([2**31, 2**63 - 1, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-300, 1e300, 0.5, 2.0, 8.0]),
    st.text(max_size=6), st.sampled_from(["false", "2", "1e4", "never", "llama3", "default", "silu", "gelu_new"]),
    st.sampled_from([1, 2, 4, 8, 16, 32, 97, 160, 1e-5, 10000.0, 1.0, 4.0]),  # values this checkpoint could hold
)
VALUES = st.one_of(st.just(DELETE), SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.sampled_from(["rope_type", "factor", "rope_theta", "x"]), SCALARS, max_size=3))

GPT2_KEYS = ["model_type", "activation_function", "scale_attn_by_inverse_layer_idx", "scale_attn_weights", "n_embd",
             "n_head", "vocab_size", "n_layer", "n_inner", "n_positions", "layer_norm_epsilon", "tie_word_embeddings",
             "bos_token_id", "eos_token_id"]
LLAMA_KEYS = ["model_type", "hidden_act", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
              "vocab_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings", "rms_norm_eps",
              "tie_word_embeddings", "attention_bias", "mlp_bias", "rope_parameters", "rope_scaling", "rope_theta",
              "bos_token_id", "eos_token_id"]
ROPE_KEYS = ["rope_type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
             "original_max_position_embeddings"]


def apply(data: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        data = data[key]
    if value is DELETE:
        data.pop(path[-1], None)
    else:
        data[path[-1]] = value


def check_outcome(directory, file_name, path, value):
    """Load and generate two tokens: success, or one CheckpointError naming the file and the key (or, for a value
    that changes a dimension, the tensor whose shape no longer matches), or a context too small for the request."""
    key = path[-1]
    try:
        model, warned = load_quietly(directory)
    except CheckpointError as e:
        event("refused at load")
        message = str(e)
        assert str(directory) in message, message
        assert key in message or "tensor" in message or (key == "model_type" and "architecture" in message), message
        return
    for message in warned:  # the only warning: special ids outside the vocabulary, naming the file and the key
        assert message.startswith(str(directory / file_name)) and "_token_id" in message, message
    try:
        result = model.generate([3, 4], max_new_tokens=2)
    except ValueError as e:
        event("loaded; the request does not fit the context")
        assert "context of" in str(e), str(e)  # max_position_embeddings too small for 2 + 2 tokens: the request's
        return
    except MemoryError as e:  # num_beams from the file, too many beams for this machine: refused before allocating
        event("loaded; refused by memory")
        assert key == "num_beams" and "KV cache" in str(e), str(e)
        return
    event("loaded and generated")
    assert len(result.token_ids) <= 2


@settings(max_examples=300)
@given(arch=st.sampled_from(["gpt2", "llama"]), data=st.data(), value=VALUES)
def test_fuzzed_config_json_values(tmp_path_factory, gpt2_dir, llama_dir, arch, data, value):
    if arch == "gpt2":
        path = (data.draw(st.sampled_from(GPT2_KEYS)),)
    else:
        path = data.draw(st.one_of(st.sampled_from(LLAMA_KEYS).map(lambda k: (k,)),
                                   st.sampled_from(ROPE_KEYS).map(lambda k: ("rope_parameters", k))))
    source = gpt2_dir if arch == "gpt2" else llama_dir
    directory = edited_copy(source, tmp_path_factory.mktemp("fuzz") / "m", "config.json",
                            lambda c: apply(c, path, value))
    check_outcome(directory, "config.json", path, value)


@settings(max_examples=200)
@given(key=st.sampled_from(["do_sample", *FILE_OPTIONS, *SPECIAL_IDS]), value=VALUES)
def test_fuzzed_generation_config_values(tmp_path_factory, gpt2_dir, key, value):
    directory = edited_copy(gpt2_dir, tmp_path_factory.mktemp("fuzz") / "m", "generation_config.json",
                            lambda c: apply(c, (key,), value))
    check_outcome(directory, "generation_config.json", (key,), value)


@pytest.mark.parametrize("name", ["config.json", "generation_config.json"])
def test_a_fifo_where_a_config_should_be_is_refused_at_once(tmp_path, gpt2_dir, name):
    """Read through nanollm.files: an OSError naming the file at once, not a hang waiting for a FIFO's writer."""
    directory = tmp_path / "model"
    shutil.copytree(gpt2_dir, directory)
    (directory / name).unlink()
    os.mkfifo(directory / name)
    with time_limit(5), pytest.raises(OSError, match=f"{directory / name} is a FIFO"):
        nanollm.load(directory)
