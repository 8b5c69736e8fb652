"""The one exception the tokenizer package raises for bad files, bad ids and refused special tokens, and the one
reader of the JSON files a tokenizer is made of (which raises it)."""
import json
from pathlib import Path


class TokenizerError(ValueError):
    """A tokenizer file could not be read, an id is out of range, or input contains a disallowed special token.

    It subclasses ValueError so callers that already catch tiktoken's ValueError keep working.
    """


def read_json_object(path) -> dict:
    """The JSON object in a tokenizer file (tokenizer.json, vocab.json, tokenizer_config.json, ...). Every one of them
    holds a single object; a missing file, bytes that are not UTF-8 JSON, or any other value is a TokenizerError
    naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenizerError(f"cannot parse {path}: {err}") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} should hold a JSON object, not a {type(data).__name__}")
    return data
