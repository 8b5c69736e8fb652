"""Chat templates: nanollm's rendering equals transformers' `apply_chat_template(..., tokenize=False,
add_generation_prompt=True)` for ChatML, Llama 2 and Llama 3 tokenizer configs.

Each config is a tokenizer_config.json written into a tmp dir with the official template of its family, over real
vocabularies from ../shared/data (GPT-2's files for ChatML and Llama 3, with their special tokens added; Llama 2's
tokenizer.model). Both the Jinja path (the template from the files, rendered in jinja2's sandbox) and the built-in
Python template of the same family must produce transformers' string, and the ids must be transformers' ids.
"""
import json

import pytest
from transformers import AutoTokenizer

from nanollm.chat import ChatTemplate, chat_template_for, encode_chat, render_plain, turn_end_ids
from nanollm.tokenizer import load_tokenizer
from tests.conftest import shared_file
from tests.generation_fixtures import single_torch_thread, write_gpt2_tokenizer_files

# The official templates, as their model repositories' tokenizer_config.json hold them.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
          " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
          "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
          "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
          "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")

pytestmark = pytest.mark.usefixtures(single_torch_thread.__name__)


FAMILIES = {  # template, vocabulary files, special tokens: (bos, eos, tokens added to the vocabulary)
    "chatml": (CHATML, "gpt2", ("<|endoftext|>", "<|im_end|>", ["<|im_start|>", "<|im_end|>"])),
    "llama3": (LLAMA3, "gpt2", ("<|begin_of_text|>", "<|eot_id|>",
                                ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])),
    "llama2": (LLAMA2, "llama2", ("<s>", "</s>", [])),
}


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  What is 2+2?  "},
     {"role": "assistant", "content": " 4. "}, {"role": "user", "content": "And in French? Ça fait…"}],
    [{"role": "user", "content": "Line one\nline two"}, {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "emoji 🤗 and <b>html</b>"}],
]


def write_family(directory, family, with_template=True):
    """Save a transformers tokenizer of this family into directory, then put the template in tokenizer_config.json.

    GPT-2 starts from the real vocab.json/merges.txt with the family's special tokens added; Llama 2 is built from
    tokenizer.model the way transformers' converter does (the sentencepiece vocabulary and generate_merges), as in
    tests/test_tokenizer_pretrained.py.
    """
    import transformers

    template, files, (bos, eos, extra) = FAMILIES[family]
    if files == "gpt2":
        source = directory / "source"
        source.mkdir()
        write_gpt2_tokenizer_files(source)
        tokenizer = transformers.GPT2Tokenizer.from_pretrained(source)
        tokenizer.add_special_tokens({"additional_special_tokens": extra})
        tokenizer.add_special_tokens({"bos_token": bos, "eos_token": eos})
    else:
        import sentencepiece
        from transformers.tokenization_utils_base import generate_merges

        sp = sentencepiece.SentencePieceProcessor(model_file=str(shared_file("tokenizers/llama2/tokenizer.model")))
        vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
        tokenizer = transformers.LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), add_bos_token=True)
    tokenizer.save_pretrained(directory)
    (directory / "chat_template.jinja").unlink(missing_ok=True)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    if with_template:
        config["chat_template"] = template
    config_file.write_text(json.dumps(config), encoding="utf-8")
    return directory


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
    assert encode_chat(ours, expected) == theirs(expected, add_special_tokens=False)["input_ids"]


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
