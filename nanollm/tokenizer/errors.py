"""The one exception the tokenizer package raises for bad files, bad ids and refused special tokens."""


class TokenizerError(ValueError):
    """A tokenizer file could not be read, an id is out of range, or input contains a disallowed special token.

    It subclasses ValueError so callers that already catch tiktoken's ValueError keep working.
    """
