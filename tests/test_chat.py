"""Chat templates: nanollm's rendering equals transformers' `apply_chat_template(..., tokenize=False,
add_generation_prompt=True)` for ChatML, Llama 2 and Llama 3 tokenizer configs.

Each config is a tokenizer_config.json written into a tmp dir with the official template of its family, over real
vocabularies from ../shared/data (GPT-2's files for ChatML and Llama 3, with their special tokens added; Llama 2's
tokenizer.model). Both the Jinja path (the template from the files, rendered in jinja2's sandbox) and the built-in
Python template of the same family must produce transformers' string, and the ids must be transformers' ids.
"""
import pytest
from transformers import AutoTokenizer

from nanollm.chat import ChatTemplate, chat_template_for, render_plain, turn_end_ids
from nanollm.tokenizer import load_tokenizer
from tests.generation_fixtures import FAMILIES, LLAMA2, write_family


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  What is 2+2?  "},
     {"role": "assistant", "content": " 4. "}, {"role": "user", "content": "And in French? Ça fait…"}],
    [{"role": "user", "content": "Line one\nline two"}, {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "emoji 🤗 and <b>html</b>"}],
]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    directory = write_family(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_templates_equal_apply_chat_template(family, conversation):
    name, ours, theirs = family
    messages = CONVERSATIONS[conversation]
    expected = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    from_files = chat_template_for(ours)
    assert from_files.name == "jinja"
    assert from_files.render(messages) == expected
    assert chat_template_for(ours, name).render(messages) == expected  # the built-in Python twin
    # No special token inside these messages, so the ids are transformers' ids of the whole rendered text
    assert from_files.encode(ours, messages) == theirs(expected, add_special_tokens=False)["input_ids"]


def test_builtin_template_is_chosen_from_special_tokens(tmp_path):
    for family in FAMILIES:
        (tmp_path / family).mkdir()
        directory = write_family(tmp_path / family, family, with_template=False)
        assert chat_template_for(load_tokenizer(directory)).name == family


def test_turn_end_ids(family):
    name, ours, _ = family
    end = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "llama2": "</s>"}[name]
    assert ours.special_tokens.get(end, ours.eos_token_id) in turn_end_ids(ours)


def test_plain_fallback():
    """No chat format: role lines, and the assistant line opened for the model to continue."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render_plain(messages, True) == "System: Be brief.\nUser: Hi\nAssistant:"
    assert ChatTemplate("plain").render(messages, add_generation_prompt=False) == "System: Be brief.\nUser: Hi\n"


def test_jinja_errors_and_the_sandbox_are_clear_value_errors():
    alternate = ChatTemplate("jinja", "<s>", "</s>", source=LLAMA2)
    with pytest.raises(ValueError, match="must alternate"):
        alternate.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    escape = ChatTemplate("jinja", source="{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ValueError, match="refused"):
        escape.render([{"role": "user", "content": "a"}])
    with pytest.raises(ValueError, match="not valid Jinja"):
        ChatTemplate("jinja", source="{% for %}").render([{"role": "user", "content": "a"}])
    with pytest.raises(ValueError, match="role"):
        ChatTemplate("chatml").render([{"role": "robot", "content": "a"}])
