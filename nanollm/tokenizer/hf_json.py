"""Hugging Face ``tokenizer.json`` files whose model is BPE: byte-level (GPT-2, Llama 3, Qwen) or Metaspace (Llama 2).

A tokenizer.json describes a pipeline: added tokens are cut out of the text first, then each remaining segment goes
through a normalizer, a pre-tokenizer and the BPE model; a post-processor adds template tokens such as BOS, and a
decoder maps tokens back. This module reads the subset of that pipeline that BPE language models use and turns it
into nanollm's pieces:

    pre_tokenizer [Split, Digits, ...] ByteLevel        -> byte_level.ByteLevelBPE cutting words by those steps
    pre_tokenizer Metaspace, Split, Digits (or none, with normalizer Prepend/Replace "▁")
                                                        -> MetaspaceModel over sentencepiece.PieceBPE
    normalizer NFC/NFD/NFKC/NFKD, Prepend, Replace, Sequence      -> applied to each segment, as tokenizers does
    post_processor TemplateProcessing / Roberta / Bert / ByteLevel -> prompt_prefix and prompt_suffix ids
    decoder ByteLevel; or Replace("▁", " "), ByteFallback, Fuse, Strip, Metaspace  -> decoding.DecodeRules
    added_tokens                                        -> special tokens ("special": true) and the other added
                                                           tokens, which every text is cut at (special.py)

Every value is read with the type tokenizers requires of it (``errors.get``), so a malformed file is one
TokenizerError naming the file and the key. Anything this module does not reproduce exactly is refused by name
rather than skipped: other models (WordPiece, Unigram), other pre-tokenizers (``pre_tokenizers.py`` lists those it
reads, and in which orders), other decoders, BPE dropout, an added token's ``single_word`` flag (a few BERT-era
tokens). An added token's ``lstrip``/``rstrip`` (Phi-3's <|end|>, <|assistant|>: the token takes the white space
beside it) are honoured (``special.split_on_special``). A tokenizer is never silently wrong.

Added tokens' ids: like tokenizers, nanollm does not take the ``id`` written beside each added token but gives one
by tokenizers' rule (``special.added_token_ids``): the vocabulary's id for a token already in it (an added "ing"
that merges also make), else the next free id. Files tokenizers writes agree with that rule.

Metaspace semantics, from tokenizers' ``metaspace.rs`` (``pre_tokenizers.Metaspace``): spaces become "▁"; with
prepend_scheme "always" every piece gets a leading "▁" unless it already starts with one, with "first" only the piece
at the very start of the input does, with "never" none does. (So " Hello" is "▁Hello" here, where sentencepiece
itself makes "▁▁Hello".)

Sources: huggingface/tokenizers (``tokenizer/mod.rs``, ``pre_tokenizers/{byte_level,metaspace,split}.rs``,
``normalizers/``, ``processors/template.rs``, ``models/bpe/model.rs``, ``added_vocabulary.rs``, ``decoders/``).
"""
from __future__ import annotations

import unicodedata
from pathlib import Path
from types import NoneType

from .byte_level import compile_regex, from_string_vocab, vocab_token_bytes
from .decoding import DecodeRules
from .errors import Place, check_vocab, expect, get, items, read_json_object
from .guards import repair_surrogates
from .parts import TokenizerParts
from .pre_tokenizers import Metaspace, PreTokenizer, check_order, metaspace_settings, pattern_of, read_pre_tokenizer
from .sentencepiece import SPACE, PieceBPE, byte_piece
from .special import added_token_ids

_UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


def _steps(parent: dict, key: str, children: str, place: Place) -> list[tuple[dict, Place]]:
    """The component ``parent[key]`` (a normalizer, pre_tokenizer, post_processor or decoder) as a list of
    (step, place): a Sequence becomes its parts, in order; null or a missing key becomes []."""
    return _flatten(get(parent, key, (dict, NoneType), place, None), children, place[key])


def _flatten(component: dict | None, children: str, place: Place) -> list[tuple[dict, Place]]:
    if component is None:
        return []
    if get(component, "type", str, place) != "Sequence":
        return [(component, place)]
    return [step for child, at in items(component, children, dict, place)
            for step in _flatten(child, children, at)]


class Normalizer:
    """The normalizer steps of a tokenizer.json, applied to one segment of text."""

    def __init__(self, steps: list[tuple[dict, Place]]):
        self.steps = [_normalizer_step(step, place) for step, place in steps]

    def __call__(self, text: str) -> str:
        for step in self.steps:
            text = step(text)
        return text


def _normalizer_step(step: dict, place: Place):
    kind = step["type"]
    if kind in _UNICODE_FORMS:
        return lambda text: unicodedata.normalize(kind, text)
    if kind == "Prepend":
        prefix = get(step, "prepend", str, place)
        return lambda text: prefix + text if text else text  # tokenizers' Prepend leaves an empty segment empty
    if kind == "Replace":
        target, is_regex, at = pattern_of(step, place)
        new = get(step, "content", str, place)
        if not is_regex:
            return lambda text: text.replace(target, new)
        pattern = compile_regex(target, str(at))  # runs under a time limit (guards.py)
        return lambda text: pattern.sub(new, text)
    raise place["type"].error(f"is {kind!r}, a normalizer nanollm does not support")


class NormalizedByteLevel:
    """A byte-level model behind a normalizer (Qwen's NFC); without one, the ByteLevelBPE is used directly."""

    def __init__(self, normalizer: Normalizer, bpe):
        self.normalizer = normalizer
        self.bpe = bpe

    def encode_ordinary(self, text: str, at_start: bool = True) -> list[int]:
        return self.bpe.encode_ordinary(self.normalizer(repair_surrogates(text)), at_start)


class MetaspaceModel:
    """Hugging Face's SentencePiece-style pipeline: normalizer, pre-tokenizer (Metaspace, Split, Digits, or none at
    all when the normalizer itself writes the "▁", as in the legacy Llama 2 / Mistral files), character BPE."""

    def __init__(self, normalizer: Normalizer, pre_tokenizer: PreTokenizer, bpe: PieceBPE):
        self.normalizer = normalizer
        self.pre_tokenizer = pre_tokenizer
        self.bpe = bpe

    def encode_ordinary(self, text: str, at_start: bool = True) -> list[int]:
        words = self.pre_tokenizer.words(self.normalizer(repair_surrogates(text)), at_start)
        return [i for word in words for i in self.bpe.encode(word)]


def _merges(model: dict, place: Place) -> list[tuple[str, str]]:
    """model.merges: "left right" strings (tokenizers < 0.20) or [left, right] pairs."""
    merges = []
    for merge, at in items(model, "merges", (str, list), place):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
            raise at.error(f"must be a pair of tokens ('left right' or [left, right]), not {merge!r}")
        merges.append((pair[0], pair[1]))
    return merges


def _check_bpe_options(model: dict, place: Place) -> None:
    """Refuse the BPE model options nanollm does not implement; check the types of the others."""
    kind = get(model, "type", str, place, "BPE")  # tokenizers reads a model without "type" as BPE when it fits
    if kind != "BPE":
        raise place["type"].error(f"is {kind!r}; only BPE tokenizer.json models are supported")
    for option in ("continuing_subword_prefix", "end_of_word_suffix"):
        if get(model, option, (str, NoneType), place, None):
            raise place[option].error(f"is {model[option]!r}; this BPE option is not supported")
    if get(model, "dropout", (float, NoneType), place, None):
        raise place["dropout"].error("is set: BPE dropout makes encoding random; it is not supported")
    for flag in ("byte_fallback", "fuse_unk", "ignore_merges"):
        get(model, flag, bool, place, False)
    get(model, "unk_token", (str, NoneType), place, None)


def _added_tokens(spec: dict, place: Place, vocab: dict[str, int]
                  ) -> tuple[dict[str, int], set[str], dict[str, tuple[bool, bool]]]:
    """-> (content -> id of every added token, the contents marked special, content -> (lstrip, rstrip) of those
    that take white space). Module docstring: the ids are tokenizers', not the file's."""
    contents, control, strips = [], set(), {}
    for token, at in items(spec, "added_tokens", dict, place, default=()):
        get(token, "id", int, at)  # required by tokenizers, though not used (see the module docstring)
        content = get(token, "content", str, at)
        contents.append(content)
        if get(token, "special", bool, at, False):
            control.add(content)
        get(token, "normalized", bool, at, False)
        if get(token, "single_word", bool, at, False):
            raise at["single_word"].error("is true: nanollm does not implement this flag, and ignoring it would "
                                          "split the text differently from tokenizers")
        flags = get(token, "lstrip", bool, at, False), get(token, "rstrip", bool, at, False)
        if any(flags):
            strips[content] = flags
    return added_token_ids(contents, vocab), control, strips


def load_tokenizer_json(path: str | Path) -> TokenizerParts:
    """Read tokenizer.json into its parts: model, decode rules, special and added tokens, what surrounds a prompt."""
    spec = read_json_object(path)
    top = Place(path)
    model = get(spec, "model", dict, top)
    _check_bpe_options(model, top["model"])
    vocab = check_vocab(get(model, "vocab", dict, top["model"]), top["model"]["vocab"])
    merges = _merges(model, top["model"])
    specials, control, strips = _added_tokens(spec, top, vocab)
    normalizer, pre_tokenizer, kind = front_end(spec, top)
    decoders = _steps(spec, "decoder", "decoders", top)
    if not decoders:
        raise top["decoder"].error("is missing: tokens would decode as their raw strings, which nanollm does not do")
    if kind == "byte_level":
        encoder = byte_level_encoder(vocab, merges, normalizer, pre_tokenizer,
                                     ignore_merges=model.get("ignore_merges", False))
        decode_rules = _byte_level_rules(vocab, decoders, specials)
    else:
        encoder, decode_rules = _metaspace(vocab, merges, normalizer, pre_tokenizer, decoders, specials, control,
                                           model, top)
    prefix, suffix = _template(spec, top, decode_rules)
    return TokenizerParts(encoder, decode_rules, prompt_prefix=prefix, prompt_suffix=suffix, strips=strips,
                          special_tokens={text: i for text, i in specials.items() if text in control},
                          added_tokens={text: i for text, i in specials.items() if text not in control})


def front_end(spec: dict, place: Place) -> tuple[Normalizer, PreTokenizer, str]:
    """A tokenizer.json's normalizer and pre-tokenizer, read and checked, and which pipeline they make:
    "byte_level" or "pieces" (``pre_tokenizers.check_order``). ``loading.py`` passes the components that
    transformers' tokenizer classes build around vocab.json + merges.txt, written the same way."""
    normalizer = Normalizer(_steps(spec, "normalizer", "normalizers", place))
    steps = _steps(spec, "pre_tokenizer", "pretokenizers", place)
    kind = check_order(steps)
    return normalizer, read_pre_tokenizer(steps), kind


def byte_level_encoder(vocab: dict[str, int], merges: list[tuple[str, str]], normalizer: Normalizer,
                       pre_tokenizer: PreTokenizer, *, ignore_merges: bool = False):
    """Byte-level BPE over ``vocab`` and ``merges``, behind the normalizer when there is one."""
    # ignore_merges, as tokenizers: a word that is in the vocabulary is that one token, whatever the merges say.
    bpe = from_string_vocab(vocab, merges, pre_tokenizer=pre_tokenizer, whole_word_first=ignore_merges)
    return bpe if not normalizer.steps else NormalizedByteLevel(normalizer, bpe)


def _byte_level_rules(vocab: dict[str, int], decoders: list[tuple[dict, Place]], specials: dict[str, int]):
    """The ByteLevel decoder maps every token's string back to bytes, added tokens included."""
    for step, place in decoders:
        if step["type"] != "ByteLevel":
            raise place["type"].error(f"is {step['type']!r}; a byte-level tokenizer must decode with ByteLevel")
    return DecodeRules(vocab_token_bytes({**vocab, **specials}))


def _metaspace(vocab, merges, normalizer, pre_tokenizer, decoders, specials, control, model, place):
    metaspace = next((step for step in pre_tokenizer.steps if isinstance(step, Metaspace)), None)
    replacement = metaspace.replacement if metaspace else SPACE
    byte_ids = None
    if model.get("byte_fallback", False):
        missing = [byte_piece(b) for b in range(256) if byte_piece(b) not in vocab]
        if missing:
            raise place["model"]["byte_fallback"].error(f"is true but {missing[0]} is not in the vocabulary")
        byte_ids = [vocab[byte_piece(b)] for b in range(256)]
    unk = model.get("unk_token")
    if unk is not None and unk not in vocab:  # tokenizers fails on the first unknown character instead
        raise place["model"]["unk_token"].error(f"is {unk!r}, which is not in the vocabulary")
    if unk is None and byte_ids is None:  # tokenizers silently drops every character outside the vocabulary
        raise place["model"].error("has neither byte_fallback nor an unk_token: a character outside the vocabulary "
                                   "could not be encoded")
    pair_ranks = {}
    for rank, pair in enumerate(merges):
        if pair[0] + pair[1] not in vocab:  # tokenizers refuses such a file too
            raise place["model"]["merges"][rank].error(f"makes {pair[0] + pair[1]!r}, which is not in the vocabulary")
        pair_ranks.setdefault(pair, rank)
    bpe = PieceBPE(
        piece_ids=vocab, pair_ranks=pair_ranks, byte_ids=byte_ids, unk_id=vocab.get(unk),
        fuse_unk=model.get("fuse_unk", False), whole_word_first=model.get("ignore_merges", False),
    )
    encoder = MetaspaceModel(normalizer, pre_tokenizer, bpe)

    # Decoding as sentencepiece does: "▁" is a space, byte pieces are bytes, special tokens show nothing, and the
    # leading space of the first piece goes when the decoder strips it (Strip decoder or Metaspace decoder).
    strips = [_strips_first_space(step, at, replacement) for step, at in decoders]  # checks every step
    strip_first = any(strips)
    kinds = {step["type"] for step, _ in decoders}
    if not kinds & {"Replace", "Metaspace"}:
        raise place["decoder"].error(f"never turns {replacement!r} back into a space; nanollm always does")
    if byte_ids is not None and "ByteFallback" not in kinds:
        raise place["decoder"].error("has no ByteFallback step, so byte pieces would decode as their names")
    byte_values = {byte_piece(b): b for b in range(256)} if byte_ids is not None else {}
    token_bytes, first = {}, {}
    for text, i in vocab.items():
        if text in byte_values:
            token_bytes[i] = bytes([byte_values[text]])
            continue
        token_bytes[i] = text.replace(replacement, " ").encode("utf-8")
        if strip_first and text.startswith(replacement):
            first[i] = text[len(replacement):].replace(replacement, " ").encode("utf-8")
    # Added tokens: one marked special (<s>, <start_of_turn>) shows nothing, as sentencepiece's control pieces; any
    # other (Gemma 3 adds "\n\n", "  ", "<unused0>" ...) decodes to its own text, through the same decoder steps.
    for text, i in specials.items():
        token_bytes[i] = b"" if text in control else text.replace(replacement, " ").encode("utf-8")
        first.pop(i, None)
    start_ids = frozenset(i for text, i in specials.items() if text in control)
    return encoder, DecodeRules(token_bytes, first, start_ids=start_ids, replace_per_byte=True)


def _strips_first_space(step: dict, place: Place, replacement: str) -> bool:
    """Check one decoder step of a Metaspace pipeline; True when it removes the first piece's leading space.

    Supported are the steps whose effect ``_metaspace``'s decode rules reproduce: Replace(replacement -> " "),
    ByteFallback, Fuse, Strip(" ", start 0 or 1, stop 0), Metaspace. Anything else is refused by name.
    """
    kind = step["type"]
    if kind in ("ByteFallback", "Fuse"):
        return False
    if kind == "Replace":
        target, is_regex, _ = pattern_of(step, place)
        if is_regex or target != replacement or get(step, "content", str, place) != " ":
            raise place.error(f"must replace {replacement!r} with ' '; another Replace decoder is not supported")
        return False
    if kind == "Strip":
        content, start, stop = (get(step, "content", str, place), get(step, "start", int, place),
                                get(step, "stop", int, place))
        if content != " " or start not in (0, 1) or stop != 0:
            raise place.error(f"strips {content!r} start={start} stop={stop}; only ' ' start 0 or 1, stop 0 is "
                              f"supported")
        return start == 1
    if kind == "Metaspace":
        return metaspace_settings(step, place)["prepend_scheme"] != "never"
    raise place["type"].error(f"is {kind!r}, a decoder nanollm does not support with Metaspace")


def _template(spec: dict, top: Place, rules: DecodeRules) -> tuple[list[int], list[int]]:
    """The ids a post-processor puts before and after a single sequence; each must be a token of this tokenizer
    (tokenizers would hand any id on to the model)."""
    prefix: list[int] = []
    suffix: list[int] = []
    for step, place in _steps(spec, "post_processor", "processors", top):
        kind = step["type"]
        if kind == "TemplateProcessing":
            seen_sequence = False
            ids_of = _template_ids(step, place)
            for item, at in items(step, "single", dict, place):
                if "Sequence" in item:
                    seen_sequence = True
                elif "SpecialToken" in item:
                    name = get(get(item, "SpecialToken", dict, at), "id", str, at["SpecialToken"])
                    if name not in ids_of:
                        raise at.error(f"names the template token {name!r}, which special_tokens does not define")
                    (suffix if seen_sequence else prefix).extend(ids_of[name])
                else:
                    raise at.error('must be {"Sequence": ...} or {"SpecialToken": ...}')
        elif kind in ("RobertaProcessing", "BertProcessing"):
            prefix.append(_token_pair_id(step, "cls", place))
            suffix.append(_token_pair_id(step, "sep", place))
        elif kind != "ByteLevel":  # ByteLevel's post-processing only adjusts offsets
            raise place["type"].error(f"is {kind!r}, a post-processor nanollm does not support")
    unknown = [i for i in prefix + suffix if i not in rules.token_bytes]
    if unknown:
        raise top["post_processor"].error(f"adds the id {unknown[0]}, which is not a token of this tokenizer")
    return prefix, suffix


def _template_ids(step: dict, place: Place) -> dict[str, list[int]]:
    """TemplateProcessing's special_tokens: {"<s>": {"id": "<s>", "ids": [1], ...}} -> {"<s>": [1]}."""
    ids_of = {}
    for name, entry in get(step, "special_tokens", dict, place).items():
        at = place["special_tokens"][name]
        ids_of[name] = [id_ for id_, _ in items(expect(entry, dict, at), "ids", int, at)]
    return ids_of


def _token_pair_id(step: dict, key: str, place: Place) -> int:
    """RobertaProcessing's "cls": ["<s>", 0] -> 0."""
    pair = get(step, key, list, place)
    if len(pair) != 2 or not isinstance(pair[0], str):
        raise place[key].error(f"must be [token, id], not {pair!r}")
    return expect(pair[1], int, place[key][1])
