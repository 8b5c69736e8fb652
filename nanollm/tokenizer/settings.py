"""What the settings files beside a tokenizer mean: tokenizer_config.json and the legacy files transformers merges
into it (``loading.py`` names and reads them; this module reads no file).

They say, for every format: the BOS/EOS tokens, whether a prompt starts with BOS (``add_bos_token``, used when the
tokenizer file itself does not say: tokenizer.json's post-processor does), the added tokens, the chat template.
``with_settings`` puts that into a format's ``TokenizerParts``.

Added tokens beside vocab.json + merges.txt. These two files say nothing about special tokens; transformers'
GPT2Tokenizer takes them from the settings files, and cuts every one of them out of the text before BPE, the special
ones as the special-token policy says, the others always (``special_texts``, special.py).
``added_vocabulary`` rebuilds that list in transformers' order:

    1. tokenizer_config.json's ``added_tokens_decoder`` {"50257": {"content": "<|im_start|>", ...}}, by id; only when
       the config has none, added_tokens.json {"<|im_start|>": 50257} (and then special_tokens_map.json's names
       override the config's: transformers reads both legacy files only in that case);
    2. the named tokens bos/eos/unk/sep/pad/cls/mask (GPT2Tokenizer's default for bos, eos and unk is
       "<|endoftext|>"), then other ``*_token`` names in the config ("image_token");
    3. ``extra_special_tokens`` (older files: ``additional_special_tokens``).

The ids written in the files are not what decides: like tokenizers' ``AddedVocabulary.add_tokens``, a token already
in vocab.json keeps its vocabulary id and any other takes the next free id. Files written by transformers agree
with that, since their added ids count up from the vocabulary size. An added token decodes as Hugging Face's
ByteLevel decoder makes it (``byte_level.token_text_bytes``). The ``lstrip``/``rstrip`` flags of
added_tokens_decoder are honoured; ``single_word`` is not reproduced, and so refused by name when set (as in
hf_json.py). Not reproduced either: the two-pass matching that tokenizers does for ``normalized`` tokens, which
differs from one longest-first pass only when a normalized and a non-normalized token overlap in the text.

Every key nanollm reads from a settings file is checked for its JSON type when the file is read
(``check_settings``), so a malformed one is a TokenizerError naming the file and the key.

Sources: transformers ``tokenization_utils_base.py`` (``_from_pretrained``), ``tokenization_utils_tokenizers.py``
(``TokenizersBackend.__init__``), ``models/gpt2/tokenization_gpt2.py``; tokenizers ``added_vocabulary.rs``.
"""
from __future__ import annotations

from dataclasses import replace
from types import NoneType

from .errors import Place, expect, get
from .parts import TokenizerParts
from .special import added_token_ids

# transformers' named special tokens (PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES), in the order it adds them.
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def with_settings(parts: TokenizerParts, config: dict, *, default_bos: bool, name: str,
                  fallback_bos: str | None = None, fallback_eos: str | None = None) -> TokenizerParts:
    """``parts`` with what tokenizer_config.json says: BOS/EOS, whether prompts start with BOS, the chat template.
    ``default_bos``: whether a prompt starts with BOS when neither the file nor the config says; ``fallback_bos`` /
    ``fallback_eos``: the tokens to use when the config names none (a SentencePiece model's own <s> and </s>)."""
    tokens = {**parts.added_tokens, **parts.special_tokens}
    strips = parts.strips
    if strips is None:  # tokenizer.json says it for itself; otherwise added_tokens_decoder's AddedTokens do
        strips = {entry["content"]: (entry.get("lstrip", False), entry.get("rstrip", False))
                  for entry in config.get("added_tokens_decoder", {}).values()
                  if entry.get("lstrip") or entry.get("rstrip")}
    bos_text = token_text(config.get("bos_token")) or fallback_bos
    eos_text = token_text(config.get("eos_token")) or fallback_eos
    bos_id = tokens.get(bos_text) if bos_text else None
    eos_id = tokens.get(eos_text) if eos_text else None
    prefix, suffix = parts.prompt_prefix, parts.prompt_suffix
    if prefix is None:
        # No post-processor said what surrounds a prompt: use add_bos_token / add_eos_token, else the format default.
        add_bos = default_bos if config.get("add_bos_token") is None else config["add_bos_token"]
        add_eos = config.get("add_eos_token") or False
        prefix = [bos_id] if add_bos and bos_id is not None else []
        suffix = [eos_id] if add_eos and eos_id is not None else []
    return replace(parts, strips=strips, prompt_prefix=prefix, prompt_suffix=suffix, bos_token_id=bos_id,
                   eos_token_id=eos_id, chat_template=config.get("chat_template"), name=name)


# -- added tokens ----------------------------------------------------------------------------------------------------


def added_vocabulary(config: dict, vocab: dict[str, int], named: dict) -> dict[str, int]:
    """content -> id of every added token, in the order and with the ids transformers gives them (module docstring).

    ``named``: bos_token... -> token (a string, a {"content": ...} dict, or None), defaults already filled in.
    """
    entries = sorted(config.get("added_tokens_decoder", {}).items(), key=lambda pair: int(pair[0]))
    return added_token_ids([token_text(entry) for _, entry in entries] + _named_texts(config, named), vocab)


def _named_texts(config: dict, named: dict) -> list[str | None]:
    """The tokens the config names, in transformers' order: bos, eos, unk, sep, pad, cls, mask (``named``, defaults
    filled in), any other *_token holding a string or a serialized AddedToken ("image_token"), extra_special_tokens.
    transformers makes every one of them a special token."""
    texts = [token_text(named.get(key)) for key in NAMED_TOKENS]
    texts += [token_text(value) for key, value in config.items()
              if key.endswith("_token") and key not in NAMED_TOKENS
              and (isinstance(value, str) or (isinstance(value, dict) and value.get("__type") == "AddedToken"))]
    return texts + [token_text(value) for value in token_list(config.get("extra_special_tokens"))]


def special_texts(config: dict, named: dict) -> set[str]:
    """Which added tokens are special: those whose added_tokens_decoder entry says "special": true (false when
    absent, as transformers' AddedToken), and every named one (``_named_texts``). The others are matched in any
    text, special-token policy or not (special.AddedVocabulary)."""
    flagged = {entry["content"] for entry in config.get("added_tokens_decoder", {}).values()
               if entry.get("special", False)}
    return flagged | {text for text in _named_texts(config, named) if text}


def split_added_tokens(config: dict) -> tuple[dict[str, int], dict[str, int]]:
    """tokenizer_config.json's added_tokens_decoder {"128000": {"content": "<|begin_of_text|>", "special": true}, ...}
    -> (the special tokens, the other added tokens), split by ``special_texts``."""
    ids = {entry["content"]: int(i) for i, entry in config.get("added_tokens_decoder", {}).items()}
    special = special_texts(config, {key: config.get(key) for key in NAMED_TOKENS})
    return ({text: i for text, i in ids.items() if text in special},
            {text: i for text, i in ids.items() if text not in special})


def token_text(value) -> str | None:
    """tokenizer_config.json writes a token as "<s>" or as {"content": "<s>", ...} (checked by ``_check_token``)."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def token_list(value) -> list:
    """extra_special_tokens as a list of tokens: transformers 5 writes a list, or an object {name: token}."""
    if isinstance(value, dict):
        return list(value.values())
    return list(value or [])


def rename_additional_special_tokens(config: dict) -> None:
    """transformers 5 calls additional_special_tokens extra_special_tokens; a non-empty new name wins."""
    if "additional_special_tokens" in config and not config.get("extra_special_tokens"):
        config["extra_special_tokens"] = config.pop("additional_special_tokens")


# -- checking a settings file ----------------------------------------------------------------------------------------


def check_settings(settings: dict, place: Place) -> dict:
    """Check the JSON type of every key of a settings file that nanollm reads, naming the file and key when wrong."""
    for key, value in settings.items():
        if key in NAMED_TOKENS or (key.endswith("_token") and isinstance(value, dict)):
            _check_token(value, place[key])
    for key in ("add_bos_token", "add_eos_token", "add_prefix_space", "legacy"):
        get(settings, key, (bool, NoneType), place, None)
    get(settings, "tokenizer_class", (str, NoneType), place, None)
    for key, entry in get(settings, "added_tokens_decoder", dict, place, {}).items():
        at = place["added_tokens_decoder"][key]
        if not (key.isascii() and key.isdigit()):
            raise place["added_tokens_decoder"].error(f"has the key {key!r}; its keys must be token ids")
        _check_token(expect(entry, dict, at), at)
        for flag in ("lstrip", "rstrip"):
            get(entry, flag, bool, at, False)
        if get(entry, "single_word", bool, at, False):
            raise at["single_word"].error("is true: nanollm does not implement this flag, and ignoring it would split "
                                          "the text differently from transformers")
    for key in ("extra_special_tokens", "additional_special_tokens"):
        tokens = get(settings, key, (list, dict, NoneType), place, None)
        for name, token in (tokens.items() if isinstance(tokens, dict) else enumerate(tokens or [])):
            _check_token(token, place[key][name])
    template = get(settings, "chat_template", (str, list, NoneType), place, None)
    for k, entry in enumerate(template if isinstance(template, list) else []):  # [{"name": ..., "template": ...}]
        at = place["chat_template"][k]
        get(expect(entry, dict, at), "name", str, at)
        get(entry, "template", str, at)
    return settings


def _check_token(value, place: Place) -> None:
    """A token in a settings file: "<s>", null, or an AddedToken object {"content": "<s>", "special": true, ...}."""
    if isinstance(value, dict):
        get(value, "content", str, place)
    else:
        expect(value, (str, NoneType), place)
