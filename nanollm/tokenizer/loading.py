"""Which files in a model directory mean which tokenizer, and the settings that sit beside them.

``from_pretrained(directory)`` tries, in this order (the first present wins):

    nanollm_tokenizer.json          nanollm's own format (saving.py), written by ``python -m nanollm.tokenizer train``
    tokenizer.json                  Hugging Face's pipeline file; what transformers' AutoTokenizer itself reads
    tokenizer.model                 a SentencePiece ModelProto (Llama 2), or tiktoken ranks (Llama 3's original files)
    vocab.json + merges.txt         GPT-2 under Hugging Face's names
    encoder.json + vocab.bpe        GPT-2 as OpenAI released it
    <name>.tiktoken                 tiktoken ranks; the pattern and special tokens follow the name (cl100k_base...)

and then reads tokenizer_config.json (and special_tokens_map.json, added_tokens.json, chat_template.jinja) when
present for the BOS/EOS tokens, whether a prompt starts with BOS (``add_bos_token``, used when tokenizer.json has no
post-processor that says so), added tokens, and the chat template.

Added tokens beside vocab.json + merges.txt. These two files say nothing about special tokens; transformers'
GPT2Tokenizer takes them from the settings files, and cuts every one of them out of the text before BPE (special or
not, as with tokenizer.json's added_tokens). ``_added_vocabulary`` rebuilds that list in transformers' order:

    1. tokenizer_config.json's ``added_tokens_decoder`` {"50257": {"content": "<|im_start|>", ...}}, by id; only when
       the config has none, added_tokens.json {"<|im_start|>": 50257} (and then special_tokens_map.json's names
       override the config's: transformers reads both legacy files only in that case);
    2. the named tokens bos/eos/unk/sep/pad/cls/mask (GPT2Tokenizer's default for bos, eos and unk is
       "<|endoftext|>"), then other ``*_token`` names in the config ("image_token");
    3. ``extra_special_tokens`` (older files: ``additional_special_tokens``).

The ids written in the files are not what decides: like tokenizers' ``AddedVocabulary.add_tokens``, a token already
in vocab.json keeps its vocabulary id and any other takes the next free id. Files written by transformers agree
with that, since their added ids count up from the vocabulary size. An added token decodes as Hugging Face's
ByteLevel decoder makes it (``byte_level.token_text_bytes``). Not reproduced: the ``lstrip``/``rstrip``/
``single_word`` flags (as in hf_json.py), and the two-pass matching that tokenizers does for ``normalized`` tokens,
which differs from one longest-first pass only when a normalized and a non-normalized token overlap in the text.

Sources: transformers ``tokenization_utils_base.py`` (``_from_pretrained``), ``tokenization_utils_tokenizers.py``
(``TokenizersBackend.__init__``), ``models/gpt2/tokenization_gpt2.py``; tokenizers ``added_vocabulary.rs``.
"""
from __future__ import annotations

from pathlib import Path

from .byte_level import (
    TIKTOKEN_SPECIAL_TOKENS,
    bytes_to_unicode,
    from_tiktoken_ranks,
    load_tiktoken_ranks,
    load_vocab_and_merges,
    token_text_bytes,
)
from .decoding import DecodeRules
from .errors import TokenizerError, read_json_object
from .hf_json import load_tokenizer_json
from .saving import NANOLLM_TOKENIZER_FILE, load_nanollm_tokenizer
from .sentencepiece import ModelProto, SentencePieceModel
from .tokenizer import Tokenizer

_FORMATS = (
    (NANOLLM_TOKENIZER_FILE,),
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("vocab.json", "merges.txt"),
    ("encoder.json", "vocab.bpe"),
)
# transformers' named special tokens (PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES), in the order it adds them.
_NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# GPT2Tokenizer's defaults for a name the config leaves out (an explicit null there means no such token).
_GPT2_DEFAULT_TOKENS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}


def load_tokenizer(directory) -> Tokenizer | None:
    """The tokenizer in ``directory``, or None when it holds no tokenizer files at all."""
    directory = Path(directory)
    if not any(all((directory / name).is_file() for name in names) for names in _FORMATS) and not _tiktoken_files(
        directory
    ):
        return None
    return from_pretrained(directory)


def from_pretrained(directory) -> Tokenizer:
    """Load the tokenizer in ``directory``; TokenizerError names the directory when there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TokenizerError(f"{directory} is not a directory")
    config = _read_config(directory)
    if (directory / NANOLLM_TOKENIZER_FILE).is_file():
        return load_nanollm_tokenizer(directory / NANOLLM_TOKENIZER_FILE)
    if (directory / "tokenizer.json").is_file():
        parts = load_tokenizer_json(directory / "tokenizer.json")
        return _finish(parts, config, default_bos=False, name="tokenizer.json", has_template=True)
    if (directory / "tokenizer.model").is_file():
        return _from_tokenizer_model(directory / "tokenizer.model", config)
    for vocab_name, merges_name in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (directory / vocab_name).is_file() and (directory / merges_name).is_file():
            return _from_vocab_and_merges(directory / vocab_name, directory / merges_name, config)
    tiktoken_files = _tiktoken_files(directory)
    if len(tiktoken_files) == 1:
        return load_tiktoken(tiktoken_files[0], config=config)
    if len(tiktoken_files) > 1:
        raise TokenizerError(f"{directory} holds several *.tiktoken files: {[f.name for f in tiktoken_files]}")
    expected = ", ".join(" + ".join(names) for names in _FORMATS) + ", *.tiktoken"
    raise TokenizerError(f"no tokenizer files in {directory} (looked for {expected})")


def load_tiktoken(path, *, pattern: str | None = None, special_tokens: dict[str, int] | None = None,
                  config: dict | None = None) -> Tokenizer:
    """A Tokenizer from a ``*.tiktoken`` ranks file.

    ``pattern``: a regex or a name ("gpt2"/"r50k", "cl100k", "o200k", "llama3"); by default it follows the file
    name ("cl100k_base.tiktoken" -> "cl100k"), and is cl100k when the name says nothing. ``special_tokens``: by
    default those tiktoken gives the encoding of that name.
    """
    path = Path(path)
    name = _encoding_name(path.name)
    model = from_tiktoken_ranks(load_tiktoken_ranks(path), pattern or name)
    specials = dict(TIKTOKEN_SPECIAL_TOKENS.get(name, {}) if special_tokens is None else special_tokens)
    parts = {"model": model, "decode_rules": _byte_rules(model, specials), "special_tokens": specials}
    return _finish(parts, config or {}, default_bos=False, name=path.name, fallback_eos="<|endoftext|>")


def _encoding_name(file_name: str) -> str:
    for name in ("o200k", "cl100k", "r50k", "p50k", "gpt2"):
        if name in file_name:
            return "r50k" if name in ("p50k", "gpt2") else name
    return "cl100k"


def _tiktoken_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.tiktoken")) if directory.is_dir() else []


def _from_tokenizer_model(path: Path, config: dict) -> Tokenizer:
    """tokenizer.model is a protobuf for SentencePiece models, but base64 text for Llama 3's tiktoken ranks."""
    data = path.read_bytes()
    first_line = data.split(b"\n", 1)[0].split()
    if len(first_line) == 2 and first_line[1].isdigit():
        specials = _added_tokens(config)
        return load_tiktoken(path, pattern="llama3", special_tokens=specials, config=config)
    model = SentencePieceModel(ModelProto.parse(data))
    specials = {**model.control_tokens, **_added_tokens(config)}
    parts = {"model": model, "decode_rules": model.decode_rules(), "special_tokens": specials}
    bos = model.proto.pieces[model.bos_id].text if model.bos_id is not None else None
    eos = model.proto.pieces[model.eos_id].text if model.eos_id is not None else None
    # sentencepiece's Llama convention (and transformers' LlamaTokenizer default): a prompt starts with BOS.
    return _finish(parts, config, default_bos=True, name=path.name, fallback_bos=bos, fallback_eos=eos)


def _from_vocab_and_merges(vocab_path: Path, merges_path: Path, config: dict) -> Tokenizer:
    """GPT-2's two files plus the added tokens of the settings files, as transformers' GPT2Tokenizer loads them."""
    model, vocab = load_vocab_and_merges(vocab_path, merges_path)
    named = {**_GPT2_DEFAULT_TOKENS, **{key: config[key] for key in _NAMED_TOKENS if key in config}}
    added = _added_vocabulary(config, vocab, named)
    char_to_byte = {ch: b for b, ch in bytes_to_unicode().items()}
    token_bytes = {i: token_text_bytes(text, char_to_byte=char_to_byte) for text, i in {**vocab, **added}.items()}
    parts = {"model": model, "decode_rules": DecodeRules(token_bytes), "special_tokens": added}
    return _finish(parts, {**config, **named}, default_bos=False, name=vocab_path.name)


def _added_vocabulary(config: dict, vocab: dict[str, int], named: dict) -> dict[str, int]:
    """content -> id of every added token, in the order and with the ids transformers gives them (module docstring).

    ``named``: bos_token... -> token (a string, a {"content": ...} dict, or None), defaults already filled in.
    """
    entries = sorted(((int(i), entry) for i, entry in config.get("added_tokens_decoder", {}).items()),
                     key=lambda pair: pair[0])
    candidates = [_token_text(entry) for _, entry in entries]
    candidates += [_token_text(named.get(key)) for key in _NAMED_TOKENS]
    # Other *_token names become special tokens too when they hold a string or a serialized AddedToken.
    candidates += [_token_text(value) for key, value in config.items()
                   if key.endswith("_token") and key not in _NAMED_TOKENS
                   and (isinstance(value, str) or (isinstance(value, dict) and value.get("__type") == "AddedToken"))]
    extras = config.get("extra_special_tokens") or []
    candidates += [_token_text(value) for value in (extras.values() if isinstance(extras, dict) else extras)]

    added: dict[str, int] = {}
    for text in candidates:
        if not text or text in added:  # tokenizers skips empty tokens; a repeated one keeps its first id
            continue
        if text in vocab:
            added[text] = vocab[text]
        else:
            # tokenizers' rule for a new id: one past the largest added id, or the vocabulary size if that is larger.
            largest = max(added.values(), default=-1)
            added[text] = largest + 1 if largest >= len(vocab) else len(vocab)
    return added


def _byte_rules(model, specials: dict[str, int]) -> DecodeRules:
    token_bytes = model.id_to_bytes()
    for text, i in specials.items():
        token_bytes[i] = text.encode("utf-8")
    return DecodeRules(token_bytes)


def _finish(parts: dict, config: dict, *, default_bos: bool, name: str, has_template: bool = False,
            fallback_bos: str | None = None, fallback_eos: str | None = None) -> Tokenizer:
    """Add what tokenizer_config.json says: BOS/EOS, whether prompts start with BOS, the chat template."""
    specials = parts["special_tokens"]
    bos_text = _token_text(config.get("bos_token")) or fallback_bos
    eos_text = _token_text(config.get("eos_token")) or fallback_eos
    bos_id = specials.get(bos_text) if bos_text else None
    eos_id = specials.get(eos_text) if eos_text else None
    if not has_template:
        # No post-processor said what surrounds a prompt: use add_bos_token / add_eos_token, else the format default.
        add_bos = config.get("add_bos_token", default_bos)
        add_eos = config.get("add_eos_token", False)
        parts["prompt_prefix"] = [bos_id] if add_bos and bos_id is not None else []
        parts["prompt_suffix"] = [eos_id] if add_eos and eos_id is not None else []
    return Tokenizer(
        **parts, bos_token_id=bos_id, eos_token_id=eos_id, chat_template=config.get("chat_template"), name=name
    )


def _token_text(value) -> str | None:
    """tokenizer_config.json writes a token as "<s>" or as {"content": "<s>", ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _added_tokens(config: dict) -> dict[str, int]:
    """tokenizer_config.json's added_tokens_decoder: {"128000": {"content": "<|begin_of_text|>", ...}, ...}."""
    return {entry["content"]: int(i) for i, entry in config.get("added_tokens_decoder", {}).items()}


def _read_config(directory: Path) -> dict:
    """tokenizer_config.json, plus what transformers takes from the legacy files and chat_template.jinja.

    As in transformers' ``_from_pretrained``: when the config has an ``added_tokens_decoder``, special_tokens_map.json
    and added_tokens.json are not read at all; otherwise the map's entries override the config's (its
    ``extra_special_tokens`` list is appended to), and added_tokens.json becomes the ``added_tokens_decoder``.
    """
    config = _read_json(directory / "tokenizer_config.json") or {}
    _rename_additional_special_tokens(config)
    if "added_tokens_decoder" not in config:
        for key, value in (_read_json(directory / "special_tokens_map.json") or {}).items():
            if key == "extra_special_tokens" and isinstance(value, list):
                existing = list(config.get(key) or [])
                value = existing + [t for t in value if _token_text(t) not in map(_token_text, existing)]
            config[key] = value
        if "additional_special_tokens" in config and "extra_special_tokens" not in config:
            config["extra_special_tokens"] = config.pop("additional_special_tokens")
        added_tokens = _read_json(directory / "added_tokens.json")  # token -> id
        if added_tokens is not None:
            config["added_tokens_decoder"] = {str(i): {"content": text} for text, i in added_tokens.items()}
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        by_name = {t.get("name"): t.get("template") for t in template}
        config["chat_template"] = by_name.get("default") or next(iter(by_name.values()), None)
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        config["chat_template"] = jinja.read_text(encoding="utf-8")
    return config


def _rename_additional_special_tokens(config: dict) -> None:
    """transformers 5 calls additional_special_tokens extra_special_tokens; a non-empty new name wins."""
    if "additional_special_tokens" in config and not config.get("extra_special_tokens"):
        config["extra_special_tokens"] = config.pop("additional_special_tokens")


def _read_json(path: Path) -> dict | None:
    """The JSON object in an optional file (tokenizer_config.json, special_tokens_map.json, added_tokens.json), or
    None when it does not exist."""
    return read_json_object(path) if path.is_file() else None
