"""The one exception the tokenizer package raises, and the one way it reads the files a tokenizer is made of.

A tokenizer directory is input from the world: any file in it may be missing, not a regular file, not UTF-8, not
JSON, or JSON of another shape than expected. Each of those must end in one TokenizerError that names the file (and,
inside a JSON file, the key), never in a traceback from deep inside a loader. Three pieces do that:

* ``read_json_object``, ``read_text``, ``read_bytes``: how every file of a tokenizer is read, through ``nanollm.files``
  (regular files only: a FIFO or /dev/zero is refused at once instead of hanging). ``read_json_object`` is the one
  place JSON is parsed (tests/test_tokenizer_layers.py checks), and checks the file holds one JSON object.
* ``Place`` and ``get``/``expect``: every value is read with the JSON type it must have, so a wrong one is reported
  where it sits: ``tokenizer.json: model.vocab must be an object, not a list``.
* ``blame(path)``: a backstop at the load boundary. Whatever a malformed file still makes the code below raise
  (KeyError, TypeError, ...) becomes a TokenizerError naming the file, and a TokenizerError raised without the file's
  name gets it. The accessors are the rule; the backstop catches what they miss, so a fuzzer never sees a traceback.
"""
from __future__ import annotations

import json
from contextlib import contextmanager

from .. import files


class TokenizerError(ValueError):
    """A tokenizer file could not be read, an id is out of range, or input contains a disallowed special token.

    It subclasses ValueError so callers that already catch tiktoken's ValueError keep working.
    """


def read_json_object(path) -> dict:
    """The JSON object in a tokenizer file (tokenizer.json, vocab.json, tokenizer_config.json, ...): the package's one
    JSON reader. Every one of them holds a single object; a missing file, something that is not a regular file, bytes
    that are not UTF-8 JSON, or any other value is a TokenizerError naming the file."""
    try:
        data = json.loads(files.read_text(path))
    except (OSError, json.JSONDecodeError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
        raise TokenizerError(f"cannot parse {path}: {err}") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} should hold a JSON object, not {_json_kind(data)}")
    return data


def read_text(path) -> str:
    """A text file of a tokenizer (merges.txt, chat_template.jinja, ...) through ``nanollm.files``; any problem is a
    TokenizerError naming the file."""
    try:
        return files.read_text(path)
    except OSError as err:
        raise TokenizerError(f"cannot read {path}: {err}") from None


def read_bytes(path) -> bytes:
    """A binary file of a tokenizer (tokenizer.model, *.tiktoken) through ``nanollm.files``."""
    try:
        return files.read_bytes(path)
    except OSError as err:
        raise TokenizerError(f"cannot read {path}: {err}") from None


# -- reading values with the type they must have ---------------------------------------------------------------------


class Place:
    """Where a value sits in a file, for error messages.

    >>> str(Place("tokenizer.json")["model"]["merges"][3])
    'tokenizer.json: model.merges[3]'
    """

    def __init__(self, path, trail: str = ""):
        self.path = path
        self.trail = trail

    def __getitem__(self, key) -> "Place":
        step = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.trail else str(key))
        return Place(self.path, self.trail + step)

    def __str__(self) -> str:
        return f"{self.path}: {self.trail}" if self.trail else str(self.path)

    def error(self, problem: str) -> TokenizerError:
        """``raise place.error("must be ...")`` -> TokenizerError('tokenizer.json: model.vocab must be ...')."""
        return TokenizerError(f"{self} {problem}")


REQUIRED = object()  # `get`'s default when the key must be present
_KIND_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true or false", type(None): "null"}


def _is(value, kind: type) -> bool:
    """JSON's types: true/false are not integers (Python's bool is an int), an integer is a number."""
    if kind is int:
        return type(value) is int
    if kind is float:
        return type(value) in (int, float)
    return isinstance(value, kind)


_VALUE_NOUNS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _json_kind(value) -> str:
    """What a JSON value is, for a message: 'a list', 'null', "the string '5'", 'the number 2.5'."""
    if isinstance(value, (dict, list)) or value is None:
        return _KIND_NAMES[type(value)]
    text = repr(value)
    return f"the {_VALUE_NOUNS.get(type(value), type(value).__name__)} {text[:40]}{'...' * (len(text) > 40)}"


def expect(value, kinds, place: Place):
    """``value`` when it has one of the JSON ``kinds`` (a type or a tuple: dict, list, str, int, float, bool, None's
    type); otherwise a TokenizerError saying where it is, what it must be and what it is."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not any(_is(value, kind) for kind in kinds):
        wanted = " or ".join(_KIND_NAMES[kind] for kind in kinds)
        raise place.error(f"must be {wanted}, not {_json_kind(value)}")
    return value


def get(obj: dict, key: str, kinds, place: Place, default=REQUIRED):
    """``obj[key]`` checked by ``expect``; ``obj`` is the object at ``place``. A missing key gives ``default``, or a
    TokenizerError when there is none. (A JSON null is a value: pass type(None) among the kinds where it is allowed.)"""
    if key not in obj:
        if default is REQUIRED:
            raise place[key].error("is missing")
        return default
    return expect(obj[key], kinds, place[key])


def items(obj: dict, key: str, kinds, place: Place, default=REQUIRED) -> list[tuple[object, Place]]:
    """The elements of the list ``obj[key]``, each checked by ``expect``, with its place: [(element, place), ...]."""
    values = get(obj, key, list, place, default)
    return [(expect(value, kinds, place[key][i]), place[key][i]) for i, value in enumerate(values)]


def check_vocab(vocab, place: Place) -> dict[str, int]:
    """A vocabulary object (vocab.json, tokenizer.json's model.vocab): token text -> id, every id an integer >= 0 and
    used once. A repeated id would make what that id decodes to depend on which entry happened to come last, so it is
    refused (tokenizers keeps one of the two, by hash order)."""
    expect(vocab, dict, place)
    owner: dict[int, str] = {}
    for text, i in vocab.items():
        if type(i) is not int or i < 0:
            raise place[text].error(f"must be an id (an integer >= 0), not {_json_kind(i)}")
        if i in owner:
            raise place.error(f"gives id {i} to both {owner[i]!r} and {text!r}")
        owner[i] = text
    return vocab


@contextmanager
def blame(path):
    """The backstop at a load boundary: inside ``with blame(path):``, what a malformed file makes the loading code
    raise becomes one TokenizerError naming ``path``, and a TokenizerError that does not name it yet is prefixed."""
    try:
        yield
    except TokenizerError as err:
        if str(path) in str(err):
            raise
        raise TokenizerError(f"{path}: {err}") from None
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, RecursionError) as err:
        raise TokenizerError(f"{path}: malformed tokenizer file ({type(err).__name__}: {err})") from None
