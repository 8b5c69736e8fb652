"""Which files in a model directory mean which tokenizer, and the settings files read beside them.

``read_directory(directory)`` (what ``Tokenizer.from_pretrained`` calls) tries, in this order (the first present wins):

    nanollm_tokenizer.json          nanollm's own format (saving.py), written by ``python -m nanollm.tokenizer train``
    tokenizer.json                  Hugging Face's pipeline file; what transformers' AutoTokenizer itself reads
    tokenizer.model                 a SentencePiece ModelProto (Llama 2), or tiktoken ranks (Llama 3's original files)
    vocab.json + merges.txt         GPT-2's files under Hugging Face's names, or Qwen's: tokenizer_config.json's
                                    tokenizer_class says which (``_VOCAB_AND_MERGES_CLASSES``)
    encoder.json + vocab.bpe        GPT-2 as OpenAI released it
    <name>.tiktoken                 tiktoken ranks; the pattern and special tokens follow the name (cl100k_base...)

and then reads tokenizer_config.json (and special_tokens_map.json, added_tokens.json, chat_template.jinja) when
present: ``settings.py`` says what they mean (BOS/EOS, whether a prompt starts with BOS, added tokens, the chat
template), plus ``add_prefix_space`` (beside vocab.json + merges.txt) and ``legacy`` (beside a SentencePiece
tokenizer.model: whether text after a special token gets the dummy prefix, ``sentencepiece.SentencePieceModel``).
Every file name the tokenizer reads is written in this module (tests/test_hub.py checks the hub client fetches them).

Every file is read through ``nanollm.files`` (regular files only), and a name that is present but is not a regular
file (a FIFO, a device, a dangling link called tokenizer.json) is refused by name rather than skipped for the next
format. Every key read from the settings files is checked for its type where it is read (``settings.check_settings``),
and ``read_directory`` loads the chosen file inside ``errors.blame``, so a malformed file is one TokenizerError naming
it. What comes out is a ``TokenizerParts``; ``tokenizer.py`` makes the Tokenizer of it.

Sources: transformers ``tokenization_utils_base.py`` (``_from_pretrained``), ``models/gpt2/tokenization_gpt2.py``,
``models/qwen2/tokenization_qwen2.py``.
"""
from __future__ import annotations

import os
from pathlib import Path

from .byte_level import (
    QWEN2_PATTERN,
    TIKTOKEN_SPECIAL_TOKENS,
    from_tiktoken_ranks,
    load_tiktoken_ranks,
    read_vocab_and_merges,
    resolve_pattern,
    vocab_token_bytes,
)
from .decoding import DecodeRules
from .errors import Place, TokenizerError, blame, check_vocab, read_bytes, read_json_object, read_text
from .hf_json import byte_level_encoder, front_end, load_tokenizer_json
from .model_proto import ModelProto
from .parts import TokenizerParts
from .pre_tokenizers import regex_pre_tokenizer
from .saving import NANOLLM_TOKENIZER_FILE, read_nanollm_tokenizer
from .sentencepiece import SentencePieceModel
from .settings import (
    NAMED_TOKENS,
    added_vocabulary,
    check_settings,
    rename_additional_special_tokens,
    special_texts,
    split_added_tokens,
    token_list,
    token_text,
    with_settings,
)

_FORMATS = (
    (NANOLLM_TOKENIZER_FILE,),
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("vocab.json", "merges.txt"),
    ("encoder.json", "vocab.bpe"),
)
_VOCAB_AND_MERGES = dict(names for names in _FORMATS if len(names) == 2)  # vocab file -> its merges file
# The tokenizer classes of transformers that read vocab.json + merges.txt, by the name tokenizer_config.json gives in
# "tokenizer_class" (GPT-2's when there is none: OpenAI's files and the first hub repositories came without one).
# These two files hold no pre-tokenizer: each class builds its own around them, written here as the tokenizer.json
# components it sets (hf_json.front_end reads them as it reads a file's), with add_prefix_space from the config, and
# its defaults for the named tokens the config leaves out (an explicit null there means no such token).
# Sources: transformers models/gpt2/tokenization_gpt2.py, models/qwen2/tokenization_qwen2.py.
_VOCAB_AND_MERGES_CLASSES = {
    "GPT2Tokenizer": {
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "defaults": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
    },
    "Qwen2Tokenizer": {  # Qwen 1.5, 2, 2.5, 3: NFC, then Qwen's regex (digits one by one), then the byte mapping
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "defaults": {"eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    },
}


def has_tokenizer_files(directory) -> bool:
    """Whether ``directory`` holds the files of any tokenizer format (``load_tokenizer`` gives None when not)."""
    directory = Path(directory)
    return any(all(_present(directory / name) for name in names) for names in _FORMATS) or bool(
        _tiktoken_files(directory))


def read_directory(directory) -> TokenizerParts:
    """The tokenizer in ``directory``; TokenizerError names the directory when there is none, and the file when one
    is malformed (``errors.blame`` is the backstop for what the checks below do not name)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TokenizerError(f"{directory} is not a directory")
    with blame(directory):  # each settings file's values are checked, naming it; this is only the backstop
        config = _read_config(directory)
    path, load = _chosen_file(directory)
    with blame(path):
        return load(path, config)


def _chosen_file(directory: Path):
    """The tokenizer file to load (the first present, in the module docstring's order) and the function loading it."""
    for name, load in ((NANOLLM_TOKENIZER_FILE, lambda path, config: read_nanollm_tokenizer(path)),
                       ("tokenizer.json", _from_tokenizer_json), ("tokenizer.model", _from_tokenizer_model)):
        if _present(directory / name):
            return directory / name, load
    for vocab_name, merges_name in _VOCAB_AND_MERGES.items():
        if _present(directory / vocab_name) and _present(directory / merges_name):
            return directory / vocab_name, _from_vocab_and_merges
    tiktoken_files = _tiktoken_files(directory)
    if len(tiktoken_files) == 1:
        return tiktoken_files[0], lambda path, config: read_tiktoken(path, config=config)
    if len(tiktoken_files) > 1:
        raise TokenizerError(f"{directory} holds several *.tiktoken files: {[f.name for f in tiktoken_files]}")
    expected = ", ".join(" + ".join(names) for names in _FORMATS) + ", *.tiktoken"
    raise TokenizerError(f"no tokenizer files in {directory} (looked for {expected})")


def _present(path: Path) -> bool:
    """Whether anything has this name: a FIFO or a dangling link called tokenizer.json is then refused when read
    (``nanollm.files``), instead of being passed over for the next format as ``is_file()`` would."""
    return os.path.lexists(path)


def read_tiktoken(path, *, pattern: str | None = None, special_tokens: dict[str, int] | None = None,
                 config: dict | None = None) -> TokenizerParts:
    """The parts of a ``*.tiktoken`` ranks file.

    ``pattern``: a regex or a name ("gpt2"/"r50k", "cl100k", "o200k", "llama3"); by default it follows the file
    name ("cl100k_base.tiktoken" -> "cl100k"), and is cl100k when the name says nothing. ``special_tokens``: by
    default those tiktoken gives the encoding of that name. ``config``: the settings files beside it, if any.
    """
    path = Path(path)
    name = _encoding_name(path.name)
    with blame(path):
        parts = _tiktoken_parts(path, pattern or name, special_tokens if special_tokens is not None
                                else TIKTOKEN_SPECIAL_TOKENS.get(name, {}), {})
        return with_settings(parts, config or {}, default_bos=False, name=path.name, fallback_eos="<|endoftext|>")


def _tiktoken_parts(path: Path, pattern: str, special_tokens: dict[str, int],
                    added_tokens: dict[str, int]) -> TokenizerParts:
    """The model, decode rules and added tokens of a tiktoken ranks file cut into words by ``pattern``."""
    pre_tokenizer = regex_pre_tokenizer(resolve_pattern(pattern), f"{path}: pattern")
    model = from_tiktoken_ranks(load_tiktoken_ranks(path), pre_tokenizer)
    return TokenizerParts(model, _byte_rules(model, {**added_tokens, **special_tokens}),
                          special_tokens=dict(special_tokens), added_tokens=dict(added_tokens))


def _encoding_name(file_name: str) -> str:
    for name in ("o200k", "cl100k", "r50k", "p50k", "gpt2"):
        if name in file_name:
            return "r50k" if name in ("p50k", "gpt2") else name
    return "cl100k"


def _tiktoken_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.tiktoken")) if directory.is_dir() else []


def _from_tokenizer_json(path: Path, config: dict) -> TokenizerParts:
    return with_settings(load_tokenizer_json(path), config, default_bos=False, name=path.name)


def _from_tokenizer_model(path: Path, config: dict) -> TokenizerParts:
    """tokenizer.model is a protobuf for SentencePiece models, but base64 text for Llama 3's tiktoken ranks.

    Both start a prompt with BOS unless the config's add_bos_token says otherwise: sentencepiece's Llama convention
    (and transformers' LlamaTokenizer default), and Llama 3's, whose tokenizer.json does it by its post-processor and
    whose own code (meta-llama/llama3, ``Tokenizer.encode(..., bos=True)`` in generation and ``ChatFormat``) always
    does. (transformers reading such a directory without tokenizer.json adds none: a prompt then lacks the token the
    model was trained to see first.)
    """
    data = read_bytes(path)
    first_line = data.split(b"\n", 1)[0].split()
    if len(first_line) == 2 and first_line[1].isdigit():
        parts = _tiktoken_parts(path, "llama3", *split_added_tokens(config))
        return with_settings(parts, config, default_bos=True, name=path.name)
    model = SentencePieceModel(ModelProto.parse(data), legacy=config.get("legacy") or False)
    special, added = split_added_tokens(config)
    parts = TokenizerParts(model, model.decode_rules(), special_tokens={**model.control_tokens, **special},
                           added_tokens=added)
    bos = model.proto.pieces[model.bos_id].text if model.bos_id is not None else None
    eos = model.proto.pieces[model.eos_id].text if model.eos_id is not None else None
    return with_settings(parts, config, default_bos=True, name=path.name, fallback_bos=bos, fallback_eos=eos)


def _from_vocab_and_merges(vocab_path: Path, config: dict) -> TokenizerParts:
    """GPT-2's two files plus the added tokens of the settings files, cut into words as the tokenizer class named in
    tokenizer_config.json does (``_VOCAB_AND_MERGES_CLASSES``); any other class is refused by name, since these
    files alone do not say how its text is cut."""
    vocab, merges = read_vocab_and_merges(vocab_path, vocab_path.with_name(_VOCAB_AND_MERGES[vocab_path.name]))
    tokenizer_class = _vocab_and_merges_class(config, vocab_path)
    components = {**tokenizer_class, "pre_tokenizer": _with_prefix_space(tokenizer_class["pre_tokenizer"],
                                                                         config.get("add_prefix_space", False))}
    normalizer, pre_tokenizer, _ = front_end(components, Place(f"the {config.get('tokenizer_class')} pipeline"))
    model = byte_level_encoder(vocab, merges, normalizer, pre_tokenizer)
    named = {**tokenizer_class["defaults"], **{key: config[key] for key in NAMED_TOKENS if key in config}}
    added = added_vocabulary(config, vocab, named)
    special = special_texts(config, named)
    parts = TokenizerParts(model, DecodeRules(vocab_token_bytes({**vocab, **added})),
                           special_tokens={text: i for text, i in added.items() if text in special},
                           added_tokens={text: i for text, i in added.items() if text not in special})
    return with_settings(parts, {**config, **named}, default_bos=False, name=vocab_path.name)


def _vocab_and_merges_class(config: dict, vocab_path: Path) -> dict:
    """The entry of ``_VOCAB_AND_MERGES_CLASSES`` for the config's tokenizer_class ("Qwen2TokenizerFast" is
    "Qwen2Tokenizer": transformers 5 makes the two one class), or TokenizerError naming it."""
    name = config.get("tokenizer_class") or "GPT2Tokenizer"
    known = _VOCAB_AND_MERGES_CLASSES.get(name.removesuffix("Fast"))
    if known is None:
        raise Place(vocab_path.with_name("tokenizer_config.json"))["tokenizer_class"].error(
            f"is {name!r}; beside {vocab_path.name} nanollm knows how {' and '.join(_VOCAB_AND_MERGES_CLASSES)} cut "
            f"text into words; tokenizing as one of them might give other ids than {name} gives")
    return known


def _with_prefix_space(pre_tokenizer: dict, add_prefix_space: bool) -> dict:
    """A class's pre-tokenizer components with the config's add_prefix_space set on its ByteLevel step."""
    if pre_tokenizer["type"] == "Sequence":
        return {**pre_tokenizer, "pretokenizers": [_with_prefix_space(step, add_prefix_space)
                                                   for step in pre_tokenizer["pretokenizers"]]}
    if pre_tokenizer["type"] == "ByteLevel":
        return {**pre_tokenizer, "add_prefix_space": add_prefix_space}
    return pre_tokenizer


def _byte_rules(model, specials: dict[str, int]) -> DecodeRules:
    token_bytes = model.id_to_bytes()
    for text, i in specials.items():
        token_bytes[i] = text.encode("utf-8")
    return DecodeRules(token_bytes)


def _read_config(directory: Path) -> dict:
    """tokenizer_config.json, plus what transformers takes from the legacy files and chat_template.jinja.

    As in transformers' ``_from_pretrained``: when the config has an ``added_tokens_decoder``, special_tokens_map.json
    and added_tokens.json are not read at all; otherwise the map's entries override the config's (its
    ``extra_special_tokens`` list is appended to), and added_tokens.json becomes the ``added_tokens_decoder``.
    """
    config = _read_settings(directory / "tokenizer_config.json")
    rename_additional_special_tokens(config)
    if "added_tokens_decoder" not in config:
        for key, value in _read_settings(directory / "special_tokens_map.json").items():
            if key == "extra_special_tokens" and isinstance(value, list):
                existing = token_list(config.get(key))
                value = existing + [t for t in value if token_text(t) not in map(token_text, existing)]
            config[key] = value
        if "additional_special_tokens" in config and "extra_special_tokens" not in config:
            config["extra_special_tokens"] = config.pop("additional_special_tokens")
        path = directory / "added_tokens.json"
        if _present(path):
            added = check_vocab(read_json_object(path), Place(path))  # token -> id
            config["added_tokens_decoder"] = {str(i): {"content": text} for text, i in added.items()}
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        by_name = {t["name"]: t["template"] for t in template}
        config["chat_template"] = by_name.get("default") or next(iter(by_name.values()), None)
    jinja = directory / "chat_template.jinja"
    if _present(jinja):
        config["chat_template"] = read_text(jinja)
    return config


def _read_settings(path: Path) -> dict:
    """The object in an optional settings file (tokenizer_config.json, special_tokens_map.json), checked by
    ``settings.check_settings``; {} when there is no such file."""
    if not _present(path):
        return {}
    return check_settings(read_json_object(path), Place(path))
