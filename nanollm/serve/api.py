"""The OpenAI API's shapes: a request body -> what nanollm generates (a `Request`), and tokens -> response bodies.

    read_request    JSON body -> Request: every field type- and range-checked, the prompt encoded, the settings
                    resolved by the engine's own resolve_settings (so a request means what generate() means)
    completion / chat_completion / *_chunk / usage    the response objects, whole or as stream chunks
    APIError        a refusal: its HTTP status and OpenAI's {"error": {"message", "type", "param", "code"}}

Request fields follow the OpenAI API reference (platform.openai.com/docs/api-reference: /v1/completions,
/v1/chat/completions), with its ranges. nanollm's own top_k, min_p and repetition_penalty ride along as extra fields
(the openai client's extra_body), as vLLM takes them. A field left out follows the model's generation_config.json
and then the engine's defaults, exactly as an option left out of nanollm.generate does (vLLM's
--generation-config auto does the same): the demo model, for one, decodes greedily with repetition_penalty 1.3.

logprobs are the model's own distribution: log_softmax of the raw logits of each position, before logit bias,
penalties, temperature or top-k/p, which is what vLLM returns by default (its "raw_logprobs"). So a token drawn at
temperature 0.5 shows the probability the model gave it, not the sharpened one it was drawn from.
"""
import json
import math
import secrets
import time
from dataclasses import dataclass
from numbers import Integral, Real

from ..chat import turn_end_ids
from ..request import GenerationSettings, encode_prompt, eos_ids, resolve_settings

MAX_BODY_BYTES = 4 << 20  # 4 MiB: a 128k-token context of text is ~0.5 MB; JSON escapes can double it, twice
MAX_ROWS = 16  # sequences one request may ask for (prompts x n): each is a row of its batch and a KV cache
MAX_STOP = 4  # OpenAI: "Up to 4 sequences where the API will stop generating further tokens"
MAX_TOP_LOGPROBS = {"completions": 5, "chat": 20}  # OpenAI's limits for `logprobs` and `top_logprobs`
DEFAULT_MAX_TOKENS = 16  # /v1/completions' documented default; chat's default is the rest of the context
LOGPROB_FLOOR = -9999.0  # a probability of 0 has no JSON number; vLLM reports -9999.0 for it, as OpenAI does

# Fields each endpoint reads. OpenAI fields nanollm does not implement are refused by name (UNSUPPORTED), never
# silently ignored: a client that sends `tools` must learn there are none.
COMMON = ("model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed",
          "presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p", "repetition_penalty")
FIELDS = {"completions": COMMON + ("prompt", "logprobs"),
          "chat": COMMON + ("messages", "max_completion_tokens", "logprobs", "top_logprobs")}
UNSUPPORTED = ("echo", "best_of", "suffix", "user", "tools", "tool_choice", "parallel_tool_calls", "functions",
               "function_call", "response_format", "audio", "modalities", "prediction", "reasoning_effort",
               "service_tier", "store", "metadata", "web_search_options")
ROLES = ("system", "user", "assistant")  # chat.py's roles


class APIError(ValueError):
    """A request the server refuses, as OpenAI reports it: an HTTP status and an error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> APIError:
    return APIError(400, message, param)


# -- reading one field ------------------------------------------------------------------------------------------------

def number(body: dict, name: str, low: float, high: float, low_open: bool = False) -> float | None:
    """A JSON number in [low, high] ((low, high] with low_open), or None when absent or null."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise bad(name, f"{name} must be a number, got {json.dumps(value)[:80]}")
    if not (low < value if low_open else low <= value) or value > high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise bad(name, f"{name} must be in {interval}, got {value!r}")
    return float(value)


def integer(body: dict, name: str, low: int, high: float = math.inf) -> int | None:
    """A whole JSON number in [low, high] (2.0 counts, as request.whole_number takes it), or None when absent."""
    value = body.get(name)
    if value is None:
        return None
    whole = isinstance(value, Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise bad(name, f"{name} must be a whole number, got {json.dumps(value)[:80]}")
    if not low <= value <= high:
        raise bad(name, f"{name} must be in [{low}, {high:g}], got {value!r}")
    return int(value)


def boolean(body: dict, name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad(name, f"{name} must be true or false, got {json.dumps(value)[:80]}")
    return value


def text(value, param: str) -> str:
    """A JSON string that is text: JSON's \\ud800 escapes can spell a lone surrogate, which no tokenizer encodes."""
    if not isinstance(value, str):
        raise bad(param, f"{param} must be a string, got {json.dumps(value)[:80]}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad(param, f"{param} holds a lone surrogate ({value[e.start]!r} at character {e.start}), which is "
                         f"not text") from None
    return value


def stop_strings(body: dict) -> tuple:
    """`stop`: a string or a list of up to MAX_STOP non-empty strings."""
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOP:
        raise bad("stop", f"stop must be a string or a list of at most {MAX_STOP} strings")
    if "" in stops:
        raise bad("stop", "a stop string must not be empty")
    return tuple(text(s, "stop") for s in stops)


def logit_bias(body: dict, vocab_size: int) -> dict | None:
    """`logit_bias`: {"token id": bias in [-100, 100]}, ids as JSON object keys are, in decimal."""
    bias = body.get("logit_bias")
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise bad("logit_bias", "logit_bias must be an object mapping token ids to numbers")
    out = {}
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit() and int(key) < vocab_size):
            raise bad("logit_bias", f"logit_bias names token {key!r}, which is not an id of the vocabulary "
                                    f"(0 .. {vocab_size - 1})")
        if isinstance(value, bool) or not isinstance(value, Real) or not -100 <= value <= 100:
            raise bad("logit_bias", f"logit_bias[{key!r}] must be a number in [-100, 100], got "
                                    f"{json.dumps(value)[:80]}")
        out[int(key)] = float(value)
    return out


def top_logprobs(kind: str, body: dict) -> int | None:
    """How many alternatives each token's logprobs list, or None for no logprobs. Completions: `logprobs` is that
    count; chat: `logprobs` is a switch and `top_logprobs` the count (OpenAI: the count needs the switch)."""
    limit = MAX_TOP_LOGPROBS[kind]
    if kind == "completions":
        return integer(body, "logprobs", 0, limit)
    count = integer(body, "top_logprobs", 0, limit)
    if not boolean(body, "logprobs"):
        if count is not None:
            raise bad("top_logprobs", "top_logprobs needs logprobs: true")
        return None
    return count or 0


# -- the prompt -------------------------------------------------------------------------------------------------------

def completion_prompts(body: dict) -> list:
    """`prompt`: a string, a list of token ids, or a list of several of either (OpenAI's batch of prompts)."""
    prompt = body.get("prompt")
    if prompt is None:
        raise bad("prompt", "prompt is required")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(is_id(t) for t in prompt)):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        prompts = prompt
    else:
        raise bad("prompt", "prompt must be a string, a list of token ids, or a list of strings or of token id lists")
    if len(prompts) > MAX_ROWS:  # before any is encoded
        raise bad("prompt", f"{len(prompts)} prompts are more than the {MAX_ROWS} a request may send")
    for i, p in enumerate(prompts):
        if isinstance(p, list) and not (p and all(is_id(t) for t in p)):
            raise bad("prompt", f"prompt {i} must be a non-empty list of token ids (whole numbers)")
    return [text(p, "prompt") if isinstance(p, str) else p for p in prompts]


def is_id(token) -> bool:
    return isinstance(token, Integral) and not isinstance(token, bool)


def chat_messages(body: dict) -> list[dict]:
    """`messages`: [{"role", "content"}], content a string or a list of {"type": "text", "text": ...} parts."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "messages must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, f"{where} must be an object with role and content")
        extra = sorted(m.keys() - {"role", "content"})
        if extra:
            raise bad(f"{where}.{extra[0]}", f"{where} has the field {extra[0]!r}; nanollm reads role and content")
        if m.get("role") not in ROLES:
            raise bad(f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}, got "
                                       f"{json.dumps(m.get('role'))[:40]}")
        out.append({"role": m["role"], "content": message_content(m.get("content"), f"{where}.content")})
    return out


def message_content(content, where: str) -> str:
    if isinstance(content, list):  # OpenAI's content parts; text is the only kind a text model reads
        if not all(isinstance(p, dict) and p.get("type") == "text" and p.keys() == {"type", "text"} for p in content):
            raise bad(where, f"{where} parts must each be {{\"type\": \"text\", \"text\": ...}}")
        return "".join(text(p["text"], where) for p in content)
    return text(content, where)


# -- the whole request ------------------------------------------------------------------------------------------------

@dataclass
class Request:
    """One API request, checked: the rows to generate and the settings they share."""

    kind: str  # "completions" or "chat"
    id: str  # "cmpl-..." or "chatcmpl-..."
    created: int  # Unix time
    model: str  # the served model's name
    prompts: list[list[int]]  # the distinct prompts, encoded
    n: int  # choices per prompt: row i * n + j is prompt i's choice j, OpenAI's index order
    settings: GenerationSettings
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    top_logprobs: int | None = None  # None: no logprobs

    @property
    def rows(self) -> list[list[int]]:
        return [p for p in self.prompts for _ in range(self.n)]


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object; anything else (not UTF-8, not JSON, NaN, nested too deep) is one 400."""
    def refuse_constant(name):
        raise ValueError(f"{name} is not a JSON number")

    try:
        body = json.loads(raw, parse_constant=refuse_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise APIError(400, f"the body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the body must be a JSON object, got {type(body).__name__}")
    return body


def check_fields(kind: str, body: dict) -> None:
    for name in body:
        if name in FIELDS[kind]:
            continue
        if name in UNSUPPORTED:
            raise bad(name, f"{name} is an OpenAI field nanollm's server does not support")
        raise bad(name, f"unknown field {name[:80]!r}; /v1/{kind.replace('chat', 'chat/completions')} takes "
                        f"{', '.join(FIELDS[kind])}")


def read_request(kind: str, body: dict, model, name: str, template=None) -> Request:
    """A parsed body of /v1/completions (kind "completions") or /v1/chat/completions ("chat") -> Request.

    template: the model's chat.ChatTemplate (chat only). Chat turns end on the template's turn-end tokens and stop
    strings as well as EOS, as the command line's --chat does.
    """
    check_fields(kind, body)
    if not isinstance(body.get("model"), str):
        raise bad("model", "model must be a string naming the model (GET /v1/models lists it)")
    if body["model"] != name:
        raise APIError(404, f"the model {body['model'][:80]!r} does not exist; this server serves {name!r}", "model",
                       "model_not_found")
    stream = bool(boolean(body, "stream"))
    options = stream_options(body, stream)
    max_tokens = max_tokens_of(kind, body)
    n = integer(body, "n", 1, MAX_ROWS) or 1
    given = dict(temperature=number(body, "temperature", 0, 2), top_p=number(body, "top_p", 0, 1, low_open=True),
                 presence_penalty=number(body, "presence_penalty", -2, 2), seed=integer(body, "seed", 0, 2**64 - 1),
                 frequency_penalty=number(body, "frequency_penalty", -2, 2), min_p=number(body, "min_p", 0, 1),
                 top_k=top_k(body), repetition_penalty=number(body, "repetition_penalty", 0, 100, low_open=True),
                 logit_bias=logit_bias(body, model.config.vocab_size), stop=stop_strings(body))
    logprobs = top_logprobs(kind, body)
    where = "messages" if kind == "chat" else "prompt"
    prompts = encoded_prompts(kind, body, model, template)
    if kind == "chat":
        given["stop"] += template.stop
        given["eos_token_ids"] = chat_eos_ids(model)
    if len(prompts) * n > MAX_ROWS:
        raise bad("n", f"{len(prompts)} prompts x n={n} choices is more than the {MAX_ROWS} sequences a request "
                       f"may ask for")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS if kind == "completions" else \
            max(1, model.config.max_seq_len - max(len(p) for p in prompts))
    for p in prompts:
        check_context(len(p), max_tokens, model.config.max_seq_len, where)
    settings = settings_of(model, max_new_tokens=max_tokens, **given)
    try:
        prompts = [encode_prompt(model, p, settings) for p in prompts]  # ids inside the vocabulary, not empty
    except ValueError as e:
        raise bad(where, str(e)) from None
    return Request(kind, ("cmpl-" if kind == "completions" else "chatcmpl-") + secrets.token_hex(12),
                   int(time.time()), name, prompts, n, settings, stream, options, logprobs)


def encoded_prompts(kind: str, body: dict, model, template) -> list[list]:
    """The prompts as token ids: chat messages through the chat template (message text never becomes a control
    token: chat.ChatTemplate.encode), completion strings as generate() encodes them (special tokens parsed)."""
    try:
        if kind == "chat":
            return [template.encode(model.tokenizer, chat_messages(body))]
        return [model.tokenizer.encode_prompt(p) if isinstance(p, str) else p for p in completion_prompts(body)]
    except APIError:
        raise
    except ValueError as e:  # a template that refuses the messages (ChatTemplateError), a tokenizer's refusal
        raise bad("messages" if kind == "chat" else "prompt", str(e)) from None


def stream_options(body: dict, stream: bool) -> bool:
    """stream_options: {"include_usage": bool}, only with stream: true (as OpenAI). -> include_usage"""
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise bad("stream_options", "stream_options needs stream: true")
    if not isinstance(options, dict) or options.keys() - {"include_usage"}:
        raise bad("stream_options", "stream_options must be {\"include_usage\": true or false}")
    return bool(boolean(options, "include_usage"))


def max_tokens_of(kind: str, body: dict) -> int | None:
    """max_tokens, or chat's newer name for it, max_completion_tokens (not both)."""
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        if body.get("max_tokens") is not None:
            raise bad("max_tokens", "give max_tokens or max_completion_tokens, not both")
        return integer(body, "max_completion_tokens", 1)
    return integer(body, "max_tokens", 1)


def top_k(body: dict) -> int | None:
    """top_k >= 0, 0 turning it off; -1 also turns it off, as vLLM's clients write it."""
    k = integer(body, "top_k", -1)
    return 0 if k == -1 else k


def chat_eos_ids(model) -> list[int]:
    """EOS and every turn-end token of a known chat format (chat.turn_end_ids), as the command line's chat stops."""
    return sorted(eos_ids(model) | turn_end_ids(model.tokenizer))


def check_context(prompt_tokens: int, max_tokens: int, context: int, where: str) -> None:
    """Prompt + max_tokens must fit the context; refused in OpenAI's words and with its code, which clients read."""
    if prompt_tokens + max_tokens > context:
        raise APIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {where}, {max_tokens} in "
                            f"the completion). Please reduce the length of the {where} or completion.", where,
                       "context_length_exceeded")


def settings_of(model, **given) -> GenerationSettings:
    """The engine's resolve_settings, which checks what the API's ranges leave to it; its refusal is a 400."""
    try:
        return resolve_settings(model, **given)
    except ValueError as e:
        raise APIError(400, str(e)) from None
