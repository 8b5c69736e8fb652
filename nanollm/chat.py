"""Chat: turn a list of messages into the one prompt string the model was trained to continue.

A chat model never sees "messages", only text in the format it was fine-tuned on, e.g. ChatML:

    <|im_start|>system\\nYou are terse.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n

The last line, the generation prompt, opens the assistant's turn; the model writes the reply and ends it with the
turn's end token (<|im_end|> here), where generation stops.

Which format, in order:
  1. the `chat_template` from tokenizer_config.json (a Jinja template), rendered as transformers renders it:
     jinja2's ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols extension, a
     `tojson` filter that does not escape HTML, and `raise_exception` / `strftime_now` globals. The template comes
     from the model's files, so it runs sandboxed. jinja2 is an optional extra (`pip install jinja2`), imported here
     only;
  2. otherwise a built-in template chosen by the tokenizer's special tokens: ChatML (<|im_start|>), Llama 3
     (<|start_header_id|>) or Llama 2 ([INST] with <s>/</s>), written below as plain Python that produces exactly
     what the official Jinja templates produce;
  3. otherwise plain text, "User: ...\\nAssistant: ...", which any base model can continue (and stop at "\\nUser:").
"""
import json
from dataclasses import dataclass, field
from datetime import datetime

ROLES = ("system", "user", "assistant")
# Tokens that end an assistant turn in common chat formats: generation stops on them as on EOS.
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def check_messages(messages):
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"a message is {{'role': one of {ROLES}, 'content': str}}, got {m!r}")


# -- built-in templates (each equals the official Jinja template of its model family) ------------------------------

def render_chatml(messages, add_generation_prompt, bos_token="", eos_token=""):
    """ChatML (OpenAI; Qwen, OpenHermes, SmolLM): <|im_start|>role\\ncontent<|im_end|>\\n per message."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def render_llama3(messages, add_generation_prompt, bos_token="<|begin_of_text|>", eos_token=""):
    """Llama 3 Instruct: BOS, then <|start_header_id|>role<|end_header_id|>\\n\\n content (stripped) <|eot_id|>."""
    text = bos_token + "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
                               for m in messages)
    return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


def render_llama2(messages, add_generation_prompt, bos_token="<s>", eos_token="</s>"):
    """Llama 2 Chat: <s>[INST] user [/INST] assistant </s>, the system prompt inside the first [INST] in <<SYS>>.

    Roles must alternate user/assistant after an optional system message. Llama 2's template has no generation
    prompt: the assistant's turn starts right after " [/INST]", so add_generation_prompt changes nothing.
    """
    system = None
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    parts = []
    for i, m in enumerate(messages):
        if (m["role"] == "user") != (i % 2 == 0):
            raise ValueError("Llama 2 chat: roles must alternate user/assistant/user/assistant/...")
        content = m["content"]
        if i == 0 and system is not None:
            content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
        if m["role"] == "user":
            parts.append(f"{bos_token}[INST] {content.strip()} [/INST]")
        elif m["role"] == "assistant":  # a later system message writes nothing, as in the official template
            parts.append(f" {content.strip()} {eos_token}")
    return "".join(parts)


def render_plain(messages, add_generation_prompt, bos_token="", eos_token=""):
    """No chat format at all: "System: ...", "User: ...", "Assistant: ..." lines, for base models."""
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return text + ("Assistant:" if add_generation_prompt else "")


BUILTIN = {"chatml": render_chatml, "llama3": render_llama3, "llama2": render_llama2, "plain": render_plain}


# -- Jinja templates from tokenizer_config.json --------------------------------------------------------------------

def compile_jinja(source: str):
    """A template source -> a compiled jinja2 Template in a sandbox configured as transformers configures it."""
    try:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("this model's chat template is a Jinja template: install jinja2 (pip install jinja2) "
                          "or pick a built-in one (--chat-template chatml|llama2|llama3|plain)") from None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes <, > and & for HTML; chat templates want the plain JSON text
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"the chat template is not valid Jinja: {e}") from None


@dataclass
class ChatTemplate:
    """One chat format: how to render messages, and what ends an assistant turn."""

    name: str  # "jinja" (from the tokenizer files), "chatml", "llama2", "llama3" or "plain"
    bos_token: str = ""  # the text of the BOS token, for templates that write it ("<s>")
    eos_token: str = ""  # "</s>"
    source: str | None = None  # the Jinja source when name == "jinja"
    stop: tuple = ()  # stop strings (plain text has no end token: stop where the model starts the user's line)
    _compiled: object = field(default=None, repr=False)

    def render(self, messages, add_generation_prompt: bool = True) -> str:
        """messages [{'role', 'content'}] -> the prompt text (special tokens written as text)."""
        check_messages(messages)
        if self.name != "jinja":
            return BUILTIN[self.name](messages, add_generation_prompt, self.bos_token, self.eos_token)
        if self._compiled is None:
            self._compiled = compile_jinja(self.source)
        import jinja2

        try:
            return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token, tools=None,
                                         documents=None)
        except jinja2.exceptions.TemplateError as e:  # raise_exception() in the template, or a sandbox refusal
            raise ValueError(f"the chat template refused these messages: {e}") from None


def token_text(tokenizer, token_id) -> str:
    """The text of a special token id ("" when unknown), as templates write it."""
    if token_id is None:
        return ""
    for text, i in tokenizer.special_tokens.items():
        if i == token_id:
            return text
    return tokenizer.decode([token_id])


def chat_template_for(tokenizer, name: str | None = None) -> ChatTemplate:
    """The template this tokenizer's model expects (see the module docstring), or the built-in `name`."""
    if name is not None and name not in BUILTIN:
        raise ValueError(f"unknown chat template {name!r}: choose one of {sorted(BUILTIN)}")
    special = tokenizer.special_tokens
    bos, eos = token_text(tokenizer, tokenizer.bos_token_id), token_text(tokenizer, tokenizer.eos_token_id)
    if name is None:
        if getattr(tokenizer, "chat_template", None):
            return ChatTemplate("jinja", bos, eos, source=tokenizer.chat_template)
        if "<|im_start|>" in special:
            name = "chatml"
        elif "<|start_header_id|>" in special:
            name = "llama3"
        elif bos == "<s>" and eos == "</s>":
            name = "llama2"
        else:
            name = "plain"
    return ChatTemplate(name, bos, eos, stop=("\nUser:",) if name == "plain" else ())


def turn_end_ids(tokenizer) -> set[int]:
    """Ids that end an assistant turn: the tokenizer's EOS and any turn-end token of a known chat format."""
    ids = {tokenizer.special_tokens[t] for t in TURN_END_TOKENS if t in tokenizer.special_tokens}
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def encode_chat(tokenizer, text: str) -> list[int]:
    """Rendered chat text -> ids. The template already wrote BOS and every special token as text, so they are
    parsed as special tokens and nothing is added (transformers: add_special_tokens=False)."""
    return tokenizer.encode(text, allowed_special="all")
