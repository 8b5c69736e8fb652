"""Which files in a model directory mean which tokenizer, and the settings that sit beside them.

``from_pretrained(directory)`` tries, in this order (the first present wins):

    nanollm_tokenizer.json          nanollm's own format (saving.py), written by ``python -m nanollm.tokenizer train``
    tokenizer.json                  Hugging Face's pipeline file; what transformers' AutoTokenizer itself reads
    tokenizer.model                 a SentencePiece ModelProto (Llama 2), or tiktoken ranks (Llama 3's original files)
    vocab.json + merges.txt         GPT-2 under Hugging Face's names
    encoder.json + vocab.bpe        GPT-2 as OpenAI released it
    <name>.tiktoken                 tiktoken ranks; the pattern and special tokens follow the name (cl100k_base...)

and then reads tokenizer_config.json (and special_tokens_map.json, chat_template.jinja) when present for the BOS/EOS
tokens, whether a prompt starts with BOS (``add_bos_token``, used when tokenizer.json has no post-processor that
says so), added tokens, and the chat template.
"""
from __future__ import annotations

import json
from pathlib import Path

from .byte_level import (
    TIKTOKEN_SPECIAL_TOKENS,
    from_tiktoken_ranks,
    load_tiktoken_ranks,
    load_vocab_and_merges,
)
from .decoding import DecodeRules
from .errors import TokenizerError
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
            model, specials = load_vocab_and_merges(directory / vocab_name, directory / merges_name)
            parts = {"model": model, "decode_rules": _byte_rules(model, specials), "special_tokens": specials}
            return _finish(parts, config, default_bos=False, name=vocab_name, fallback_bos="<|endoftext|>",
                           fallback_eos="<|endoftext|>")
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
    """tokenizer_config.json merged over special_tokens_map.json, plus chat_template.jinja when present."""
    config: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            try:
                config.update(json.loads(path.read_text(encoding="utf-8")))
            except json.JSONDecodeError as err:
                raise TokenizerError(f"cannot parse {path}: {err}") from None
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        by_name = {t.get("name"): t.get("template") for t in template}
        config["chat_template"] = by_name.get("default") or next(iter(by_name.values()), None)
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        config["chat_template"] = jinja.read_text(encoding="utf-8")
    return config
