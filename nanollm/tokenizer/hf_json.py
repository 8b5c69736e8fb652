"""Hugging Face ``tokenizer.json`` files whose model is BPE: byte-level (GPT-2, Llama 3, Qwen) or Metaspace (Llama 2).

A tokenizer.json describes a pipeline: added tokens are cut out of the text first, then each remaining segment goes
through a normalizer, a pre-tokenizer and the BPE model; a post-processor adds template tokens such as BOS, and a
decoder maps tokens back. This module reads the subset of that pipeline that BPE language models use and turns it
into nanollm's pieces:

    pre_tokenizer ByteLevel (+ optional Split regex)   -> byte_level.ByteLevelBPE with that regex
    pre_tokenizer Metaspace, or normalizer Prepend/Replace ("▁")  -> MetaspaceModel over sentencepiece.PieceBPE
    normalizer NFC/NFD/NFKC/NFKD, Prepend, Replace, Sequence      -> applied to each segment, as tokenizers does
    post_processor TemplateProcessing / Roberta / Bert / ByteLevel -> prompt_prefix and prompt_suffix ids
    added_tokens                                        -> special tokens (all of them, special or not: Hugging Face
                                                           cuts every added token out of the text)

Anything else (WordPiece, Unigram, other pre-tokenizers) raises TokenizerError naming the unsupported part, so a
tokenizer is never silently wrong. One known gap: an added token's ``lstrip``/``rstrip``/``single_word`` flags
(used by a few BERT-era models for <mask>) are ignored; GPT-2 and Llama set none of them.

Metaspace semantics, from tokenizers' ``metaspace.rs``: spaces become "▁"; with prepend_scheme "always" every
segment gets a leading "▁" unless it already starts with one, with "first" only the segment at the very start of
the input does, with "never" none does. (So " Hello" is "▁Hello" here, where sentencepiece itself makes
"▁▁Hello".)

Sources: huggingface/tokenizers (``tokenizer/mod.rs``, ``pre_tokenizers/{byte_level,metaspace,split}.rs``,
``normalizers/``, ``processors/template.rs``, ``models/bpe/model.rs``).
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

import regex

from .byte_level import GPT2_PATTERN, from_string_vocab
from .decoding import DecodeRules
from .errors import TokenizerError, read_json_object
from .sentencepiece import SPACE, PieceBPE, byte_piece


def _flatten(component: dict | None, key: str) -> list[dict]:
    """A Sequence component becomes its list of parts; None becomes []."""
    if component is None:
        return []
    if component.get("type") == "Sequence":
        return [part for child in component[key] for part in _flatten(child, key)]
    return [component]


def _pattern_text(pattern: dict) -> tuple[str, bool]:
    """tokenizers' {"String": s} or {"Regex": r} -> (regex text, is_regex)."""
    if "Regex" in pattern:
        return pattern["Regex"], True
    return pattern["String"], False


class Normalizer:
    """The normalizer steps of a tokenizer.json, applied to one segment of text."""

    def __init__(self, steps: list[dict]):
        self.steps = []
        for step in steps:
            kind = step["type"]
            if kind in ("NFC", "NFD", "NFKC", "NFKD"):
                self.steps.append(lambda text, form=kind: unicodedata.normalize(form, text))
            elif kind == "Prepend":
                # tokenizers' Prepend leaves an empty segment empty.
                self.steps.append(lambda text, prefix=step["prepend"]: prefix + text if text else text)
            elif kind == "Replace":
                target, is_regex = _pattern_text(step["pattern"])
                if is_regex:
                    compiled = regex.compile(target)
                    self.steps.append(lambda text, c=compiled, new=step["content"]: c.sub(new, text))
                else:
                    self.steps.append(lambda text, old=target, new=step["content"]: text.replace(old, new))
            else:
                raise TokenizerError(f"tokenizer.json normalizer {kind!r} is not supported")

    def __call__(self, text: str) -> str:
        for step in self.steps:
            text = step(text)
        return text


class NormalizedByteLevel:
    """A byte-level model behind a normalizer (Qwen's NFC); without one, the ByteLevelBPE is used directly."""

    def __init__(self, normalizer: Normalizer, bpe):
        self.normalizer = normalizer
        self.bpe = bpe

    def encode_ordinary(self, text: str, at_start: bool = True) -> list[int]:
        return self.bpe.encode_ordinary(self.normalizer(text), at_start)


class MetaspaceModel:
    """Hugging Face's SentencePiece-style pipeline: normalizer, Metaspace pre-tokenizer, character BPE."""

    def __init__(self, normalizer: Normalizer, metaspace: dict | None, bpe: PieceBPE):
        self.normalizer = normalizer
        self.bpe = bpe
        self.replacement = metaspace["replacement"] if metaspace else SPACE
        self.prepend_scheme = _prepend_scheme(metaspace) if metaspace else "never"
        self.split = bool(metaspace.get("split", True)) if metaspace else False
        self.metaspace = metaspace is not None

    def encode_ordinary(self, text: str, at_start: bool = True) -> list[int]:
        text = self.normalizer(text)
        if self.metaspace:
            text = text.replace(" ", self.replacement)
            prepend = self.prepend_scheme == "always" or (self.prepend_scheme == "first" and at_start)
            if prepend and text and not text.startswith(self.replacement):
                text = self.replacement + text
        if not text:
            return []
        if not self.split:
            return self.bpe.encode(text)
        # split=True: every "▁" starts a new word (tokenizers' MergedWithNext behaviour).
        ids: list[int] = []
        for word in regex.split(f"(?={regex.escape(self.replacement)})", text):
            if word:
                ids.extend(self.bpe.encode(word))
        return ids


def _prepend_scheme(metaspace: dict) -> str:
    if "prepend_scheme" in metaspace:
        return metaspace["prepend_scheme"]
    return "always" if metaspace.get("add_prefix_space", True) else "never"  # tokenizers < 0.14 files


def _merges(model: dict) -> list[tuple[str, str]]:
    merges = []
    for merge in model.get("merges", []):
        pair = tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge)
        if len(pair) != 2:
            raise TokenizerError(f"tokenizer.json merge {merge!r} is not a pair")
        merges.append(pair)
    return merges


def load_tokenizer_json(path: str | Path) -> dict:
    """Read tokenizer.json; return the keyword arguments of ``Tokenizer`` (model, decode_rules, special tokens...)."""
    spec = read_json_object(path)
    model = spec.get("model") or {}
    if model.get("type", "BPE") != "BPE" or "merges" not in model:
        raise TokenizerError(f"{path}: only BPE tokenizer.json models are supported, not {model.get('type')!r}")
    for option in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            raise TokenizerError(f"{path}: BPE option {option}={model[option]!r} is not supported")
    if model.get("dropout"):
        raise TokenizerError(f"{path}: BPE dropout makes encoding random; it is not supported")

    specials = {tok["content"]: tok["id"] for tok in spec.get("added_tokens", [])}
    vocab: dict[str, int] = model["vocab"]
    merges = _merges(model)
    normalizer = Normalizer(_flatten(spec.get("normalizer"), "normalizers"))
    pre_tokenizers = _flatten(spec.get("pre_tokenizer"), "pretokenizers")
    kinds = [p["type"] for p in pre_tokenizers]

    if "ByteLevel" in kinds:
        bpe_model, decode_rules = _byte_level(path, vocab, merges, pre_tokenizers, specials, model)
        encoder = bpe_model if not normalizer.steps else NormalizedByteLevel(normalizer, bpe_model)
    elif set(kinds) <= {"Metaspace"}:
        metaspace = pre_tokenizers[0] if pre_tokenizers else None
        encoder, decode_rules = _metaspace(path, vocab, merges, normalizer, metaspace, specials, model, spec)
    else:
        raise TokenizerError(f"{path}: pre-tokenizers {kinds} are not supported")

    prefix, suffix = _template(spec.get("post_processor"), specials, path)
    return {"model": encoder, "decode_rules": decode_rules, "special_tokens": specials,
            "prompt_prefix": prefix, "prompt_suffix": suffix}


def _byte_level(path, vocab, merges, pre_tokenizers, specials, model):
    pattern = None
    add_prefix_space = False
    for step in pre_tokenizers:
        if step["type"] == "Split":
            if step.get("behavior", "Isolated") != "Isolated" or step.get("invert", False):
                raise TokenizerError(f"{path}: Split pre-tokenizer with behavior={step.get('behavior')!r} "
                                     f"invert={step.get('invert')} is not supported")
            if pattern is not None:
                raise TokenizerError(f"{path}: more than one splitting pre-tokenizer is not supported")
            text, is_regex = _pattern_text(step["pattern"])
            pattern = text if is_regex else regex.escape(text)
        elif step["type"] == "ByteLevel":
            add_prefix_space = bool(step.get("add_prefix_space", False))
            if step.get("use_regex", True):
                if pattern is not None:
                    raise TokenizerError(f"{path}: a Split regex followed by ByteLevel(use_regex) is not supported")
                pattern = GPT2_PATTERN
    if pattern is None:
        raise TokenizerError(f"{path}: ByteLevel without a splitting regex is not supported")
    bpe = from_string_vocab(
        vocab,
        merges,
        pattern=pattern,
        whole_word_first=bool(model.get("ignore_merges", False)),
        add_prefix_space=add_prefix_space,
        skip=set(specials),
    )
    token_bytes = bpe.id_to_bytes()
    for text, i in specials.items():
        token_bytes[i] = text.encode("utf-8")
    return bpe, DecodeRules(token_bytes)


def _metaspace(path, vocab, merges, normalizer, metaspace, specials, model, spec):
    replacement = metaspace["replacement"] if metaspace else SPACE
    byte_ids = None
    if model.get("byte_fallback"):
        try:
            byte_ids = [vocab[byte_piece(b)] for b in range(256)]
        except KeyError as err:
            raise TokenizerError(f"{path}: byte_fallback is on but {err.args[0]} is not in the vocabulary") from None
    unk = model.get("unk_token")
    unk_id = vocab.get(unk) if unk else None
    pair_ranks = {}
    for rank, pair in enumerate(merges):
        pair_ranks.setdefault(pair, rank)
    byte_values = {byte_piece(b): b for b in range(256)} if byte_ids is not None else {}
    bpe = PieceBPE(
        piece_ids=vocab, pair_ranks=pair_ranks, byte_ids=byte_ids, unk_id=unk_id, fuse_unk=model.get("fuse_unk", False)
    )
    encoder = MetaspaceModel(normalizer, metaspace, bpe)

    # Decoding as sentencepiece does: "▁" is a space, byte pieces are bytes, special tokens show nothing, and the
    # leading space of the first piece goes when the decoder strips it (Strip decoder or Metaspace decoder).
    decoders = _flatten(spec.get("decoder"), "decoders")
    strip_first = any(
        (d["type"] == "Strip" and d.get("start", 0) >= 1)
        or (d["type"] == "Metaspace" and _prepend_scheme(d) != "never")
        for d in decoders
    )
    token_bytes, first = {}, {}
    for text, i in vocab.items():
        if text in byte_values:
            token_bytes[i] = bytes([byte_values[text]])
            continue
        token_bytes[i] = text.replace(replacement, " ").encode("utf-8")
        if strip_first and text.startswith(replacement):
            first[i] = text[len(replacement):].replace(replacement, " ").encode("utf-8")
    for i in specials.values():
        token_bytes[i] = b""
        first.pop(i, None)
    return encoder, DecodeRules(token_bytes, first, start_ids=frozenset(specials.values()), replace_per_byte=True)


def _template(processor: dict | None, specials: dict[str, int], path) -> tuple[list[int], list[int]]:
    """The ids a post-processor puts before and after a single sequence."""
    prefix: list[int] = []
    suffix: list[int] = []
    for step in _flatten(processor, "processors"):
        kind = step["type"]
        if kind == "TemplateProcessing":
            seen_sequence = False
            ids_of = {name: entry["ids"] for name, entry in step.get("special_tokens", {}).items()}
            for item in step["single"]:
                if "Sequence" in item:
                    seen_sequence = True
                elif "SpecialToken" in item:
                    name = item["SpecialToken"]["id"]
                    if name not in ids_of:
                        raise TokenizerError(f"{path}: template token {name!r} has no ids")
                    (suffix if seen_sequence else prefix).extend(ids_of[name])
        elif kind in ("RobertaProcessing", "BertProcessing"):
            prefix.append(step["cls"][1])
            suffix.append(step["sep"][1])
        elif kind != "ByteLevel":
            raise TokenizerError(f"{path}: post-processor {kind!r} is not supported")
    return prefix, suffix

