"""Shared by the generation tests: random-weight models from tests/hf_models.py, loaded without the tokenizer step,
and real tokenizer files (GPT-2; ChatML, Llama 2 and Llama 3 chat configurations) for the tests that need text.

`write_family` saves a ChatML, Llama 2 or Llama 3 tokenizer with its official chat template into a directory.
`load_model` builds the Model from the checkpoint directly (weights_tools + nanollm.model), so these tests do not
depend on which tokenizer files a directory holds; `write_gpt2_tokenizer_files` puts the real GPT-2 vocabulary from
../shared/data beside a checkpoint.
"""
import json

import nanollm
from nanollm.backends import get_backend
from nanollm.loader import read_generation_config
from nanollm.model import Model
from tests.conftest import shared_file
from tests.hf_models import Options, build_checkpoint


def load_model(directory, tokenizer=None) -> Model:
    from weights_tools.convert import load_hf_checkpoint

    cfg, weights = load_hf_checkpoint(directory)
    return Model(cfg, weights, get_backend("numpy"), tokenizer=tokenizer,
                 generation_defaults=read_generation_config(directory, cfg.vocab_size))


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


FAMILIES = {  # template, vocabulary files, special tokens: (bos, eos, tokens added to the vocabulary)
    "chatml": (CHATML, "gpt2", ("<|endoftext|>", "<|im_end|>", ["<|im_start|>", "<|im_end|>"])),
    "llama3": (LLAMA3, "gpt2", ("<|begin_of_text|>", "<|eot_id|>",
                                ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])),
    "llama2": (LLAMA2, "llama2", ("<s>", "</s>", [])),
}


def gpt2_text_model(directory):
    """A random-weight GPT-2 with the real GPT-2 vocabulary and tokenizer files, loaded by nanollm.load: for the
    tests that match stop strings on text."""
    build_checkpoint(directory, Options(arch="gpt2", vocab_size=50257, seed=2, init_std=0.3))
    write_gpt2_tokenizer_files(directory)
    return nanollm.load(directory)


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
