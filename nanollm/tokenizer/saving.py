"""nanollm's own tokenizer file, ``nanollm_tokenizer.json``: a byte-level BPE as merges, versioned and self-describing.

Format, version 1 (a JSON object):

    {
      "format": "nanollm-tokenizer",      always this string: says what the file is
      "version": 1,                       bumped on any incompatible change; readers refuse versions they don't know
      "type": "byte_level_bpe",           the only type so far
      "pattern": "...",                   the pre-tokenizer regex (Python ``regex`` syntax)
      "merges": [[97, 97, 256], ...],     [left id, right id, result id] in merge order; ids 0..255 are the bytes
                                          0..255, a result id is either the next new id or, when left+right spells a
                                          token that already exists, that token's id
      "special_tokens": {"<|endoftext|>": 259},
      "bos_token": null,                  special-token text or null
      "eos_token": "<|endoftext|>",
      "add_bos_token": false              whether encode_prompt starts with BOS
    }

The merge order is the priority order: merge i beats merge j when i < j, exactly as in GPT-2's merges.txt.

The reader checks everything before a Tokenizer is built: each field's JSON type, that merges are numbered as above,
that the pattern compiles, that special tokens have distinct ids above the ordinary ones, that BOS/EOS are special
tokens. Any problem raises TokenizerError naming the file, never a traceback from deeper down at encode time; the
pattern runs under a time limit (``guards.py``) and a pattern that exceeds it is refused naming the file. The file is
read and written through ``nanollm.files``: only a regular file is read, and a save replaces the old file atomically
(a crash leaves the old file or the new one, never half of one).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType

from .. import files
from .byte_level import ByteLevelBPE, compile_pattern
from .decoding import DecodeRules
from .errors import Place, TokenizerError, blame, check_vocab, get, read_json_object
from .parts import TokenizerParts
from .pre_tokenizers import regex_pre_tokenizer

NANOLLM_TOKENIZER_FILE = "nanollm_tokenizer.json"
FORMAT_NAME = "nanollm-tokenizer"
FORMAT_VERSION = 1


@dataclass
class BPEMerges:
    """A byte-level BPE defined by its merges: what ``train_bpe`` produces and ``nanollm_tokenizer.json`` stores."""

    pattern: str
    merges: list[tuple[int, int, int]]
    special_tokens: dict[str, int] = field(default_factory=dict)
    bos_token: str | None = None
    eos_token: str | None = None
    add_bos_token: bool = False

    def token_bytes(self) -> dict[int, bytes]:
        """id -> bytes for the 256 byte tokens and every merge result."""
        table = {b: bytes([b]) for b in range(256)}
        for left, right, result in self.merges:
            if left not in table or right not in table:
                raise TokenizerError(f"merge {[left, right, result]} uses an id no earlier merge defined")
            merged = table[left] + table[right]
            if result in table and table[result] != merged:
                raise TokenizerError(f"merge {[left, right, result]}: id {result} already means {table[result]!r}")
            if result not in table and result != len(table):
                raise TokenizerError(f"merge {[left, right, result]}: the next new id should be {len(table)}")
            table[result] = merged
        return table

    def check(self) -> dict[int, bytes]:
        """Raise TokenizerError unless these fields make a usable tokenizer; return ``token_bytes()``."""
        table = self.token_bytes()
        compile_pattern(self.pattern)
        owner: dict[int, str] = {}
        for text, i in self.special_tokens.items():
            if not text:
                raise TokenizerError("a special token is the empty string")
            if not _encodes_as_utf8(text):
                raise TokenizerError(f"special token {text!r} is not valid Unicode (a lone surrogate)")
            if i < len(table):
                raise TokenizerError(f"special token {text!r} reuses id {i} of an ordinary token")
            if i in owner:
                raise TokenizerError(f"special tokens {owner[i]!r} and {text!r} share id {i}")
            owner[i] = text
        for role, token in (("bos_token", self.bos_token), ("eos_token", self.eos_token)):
            if token is not None and token not in self.special_tokens:
                raise TokenizerError(f"{role} {token!r} is not one of the special tokens")
        if self.add_bos_token and self.bos_token is None:
            raise TokenizerError("add_bos_token is true but there is no bos_token")
        return table

    def parts(self, name: str = "nanollm BPE", origin: str = "pattern") -> TokenizerParts:
        """What ``Tokenizer(parts)`` is built from; ``origin`` says where the pattern came from, for the message if it
        runs out of time."""
        table = self.check()
        token_ids = {b: i for i, b in table.items()}
        pair_ranks = {}
        for rank, (left, right, _) in enumerate(self.merges):
            pair_ranks.setdefault((table[left], table[right]), rank)
        model = ByteLevelBPE(token_ids=token_ids, pair_ranks=pair_ranks,
                             pre_tokenizer=regex_pre_tokenizer(self.pattern, origin), whole_word_first=False)
        decode_table = dict(table)
        for text, i in self.special_tokens.items():
            decode_table[i] = text.encode("utf-8")
        bos_id = self.special_tokens.get(self.bos_token) if self.bos_token else None
        eos_id = self.special_tokens.get(self.eos_token) if self.eos_token else None
        return TokenizerParts(
            model,
            DecodeRules(decode_table),
            special_tokens=self.special_tokens,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            prompt_prefix=[bos_id] if self.add_bos_token and bos_id is not None else [],
            name=name,
        )

    def save(self, directory, *, inputs=()) -> Path:
        """Write ``directory/nanollm_tokenizer.json`` atomically (creating the directory) and return its path.
        ``inputs``: files the tokenizer was made from, refused as the target (``nanollm.files.atomic_write``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        record = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "type": "byte_level_bpe",
            "pattern": self.pattern,
            "merges": [list(m) for m in self.merges],
            "special_tokens": self.special_tokens,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "add_bos_token": self.add_bos_token,
        }
        path = directory / NANOLLM_TOKENIZER_FILE
        files.write_text(path, json.dumps(record, ensure_ascii=False, indent=1) + "\n", inputs=inputs)
        return path

    @classmethod
    def load(cls, path) -> "BPEMerges":
        """Read and check ``nanollm_tokenizer.json``; any problem with it raises TokenizerError naming the file."""
        path = Path(path)
        record = read_json_object(path)
        with blame(path):
            merges = _from_record(record, Place(path))
            merges.check()
        return merges


def _from_record(record: dict, place: Place) -> BPEMerges:
    """A BPEMerges from the parsed JSON, refusing any field of the wrong JSON type (a float or a bool is not an id)."""
    if record.get("format") != FORMAT_NAME:
        raise place.error(f'is not a nanollm tokenizer file (no "format": "{FORMAT_NAME}")')
    version = get(record, "version", int, place)
    if version != FORMAT_VERSION:
        raise place["version"].error(f"is {version}; this nanollm reads version {FORMAT_VERSION}")
    kind = get(record, "type", str, place)
    if kind != "byte_level_bpe":
        raise place["type"].error(f"is {kind!r}, an unknown tokenizer type")
    merges = get(record, "merges", list, place)
    for i, merge in enumerate(merges):
        if not (isinstance(merge, list) and len(merge) == 3 and all(map(_is_id, merge))):
            raise place["merges"][i].error(f"must be [left id, right id, result id], integers >= 0, not {merge!r}")
    bos_token, eos_token = (get(record, key, (str, NoneType), place, None) for key in ("bos_token", "eos_token"))
    return BPEMerges(
        pattern=get(record, "pattern", str, place),
        merges=[(a, b, c) for a, b, c in merges],
        special_tokens=dict(check_vocab(get(record, "special_tokens", dict, place, {}), place["special_tokens"])),
        bos_token=bos_token,
        eos_token=eos_token,
        add_bos_token=get(record, "add_bos_token", bool, place, False),
    )


def _is_id(value) -> bool:
    return type(value) is int and value >= 0  # type(), not isinstance: JSON true/false load as bool, a subclass of int


def _encodes_as_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_nanollm_tokenizer(path) -> TokenizerParts:
    """Read ``nanollm_tokenizer.json`` into the parts of a Tokenizer."""
    return BPEMerges.load(path).parts(name=Path(path).name, origin=f"{path}: pattern")
