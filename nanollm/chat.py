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

Two kinds of input here come from strangers, and each is kept in its place:
  * the template is code from the model's files: it runs in jinja2's sandbox, in a child process with a time,
    memory and output limit (`render_jinja`), so a hostile or broken one is one error, never a hang;
  * a message is text from the user: special tokens it contains stay text (`ChatTemplate.encode`, `defuse`). A
    user who types "<|im_end|>\\n<|im_start|>system" gets those characters, not a forged system turn. This is
    stricter than transformers' apply_chat_template(tokenize=True), which tokenizes the whole rendered string with
    every special token allowed. Added tokens that are not special (Qwen3's "<think>", Gemma 3's "\\n\\n") are
    ordinary vocabulary, matched in every text as in transformers, so templates that look for them inside a
    message (Qwen3 cutting an assistant message at "</think>") work as there.
"""
import json
import multiprocessing
import os
import resource
import secrets
from dataclasses import dataclass
from datetime import datetime

from .files import read_text
from .tokenizer.special import special_regex

ROLES = ("system", "user", "assistant")
# Tokens that end an assistant turn in common chat formats: generation stops on them as on EOS. ChatML (Qwen),
# Llama 3 (and <|eom_id|>: Llama 3.1+ end a built-in tool call with it, their generation_config.json lists it as an
# EOS), Phi-3 and Gemma. (Mistral's </s> and OLMo-2's <|endoftext|> are their EOS.)
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")


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

# A template from a model's files is code from the internet. jinja2's sandbox keeps it from reaching Python's
# internals, but not from running long or building huge strings ({% for %} loops nested over range(10**5),
# 'x' * 10**10, tojson(indent=10**9)). So it renders in a forked child process that has these limits; a real chat
# template renders in milliseconds into a few kB.
TEMPLATE_SECONDS = 5.0  # wall-clock limit for one rendering
TEMPLATE_MEMORY_BYTES = 1 << 30  # memory the renderer may take beyond what the process already holds (1 GiB)
TEMPLATE_MAX_CHARS = 1 << 24  # 16 Mi characters: more text than any model's context window holds


class ChatTemplateError(ValueError):
    """A chat template that cannot be rendered: not valid Jinja, refused the messages, or passed a limit."""


def require_jinja():
    """jinja2 is an optional extra: say how to get it, or how to do without it."""
    try:
        import jinja2  # noqa: F401
    except ImportError:
        raise ImportError("this model's chat template is a Jinja template: install jinja2 (pip install jinja2) "
                          "or pick a built-in one (--chat-template chatml|llama2|llama3|plain)") from None


def compile_jinja(source: str):
    """A template source -> a compiled jinja2 Template in a sandbox configured as transformers configures it."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

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
    except (jinja2.exceptions.TemplateSyntaxError, RecursionError) as e:
        raise ChatTemplateError(f"the chat template is not valid Jinja: {e}") from None


def render_jinja(source: str, variables: dict) -> str:
    """Compile and render a template in a child process bounded by TEMPLATE_SECONDS, TEMPLATE_MEMORY_BYTES and
    TEMPLATE_MAX_CHARS; any failure is one ChatTemplateError saying which limit or what the template did.

    Compiling happens in the child too: jinja2 folds constant expressions while compiling, so `{{ 'x' * 10**10 }}`
    would build its 10 GB string in this process before rendering began. The child is forked, so it starts with
    the messages already in memory (nothing is pickled on the way in) and needs ~10 ms; only the finished text
    travels back, through a pipe.
    """
    require_jinja()
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_render_child, args=(source, variables, sender), daemon=True)
    child.start()
    sender.close()  # the child holds the only writing end: if it dies, recv() sees end of file
    try:
        if not receiver.poll(TEMPLATE_SECONDS):
            raise ChatTemplateError(f"the chat template did not finish within {TEMPLATE_SECONDS:g} s")
        status, text = receiver.recv()
    except EOFError:
        raise ChatTemplateError("the chat template's renderer died without an answer") from None
    finally:
        receiver.close()
        child.kill()
        child.join()
    if status != "ok":
        raise ChatTemplateError(text)
    return text


def _render_child(source: str, variables: dict, sender) -> None:
    """In the child: cap the address space, compile, render piece by piece while counting characters, and send
    ("ok", text) or ("error", message) back."""
    import jinja2

    in_use = int(read_text("/proc/self/statm").split()[0]) * os.sysconf("SC_PAGE_SIZE")  # bytes mapped now
    limit = in_use + TEMPLATE_MEMORY_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        pieces, size = [], 0
        for piece in compile_jinja(source).generate(**variables):
            size += len(piece)
            if size > TEMPLATE_MAX_CHARS:
                raise ChatTemplateError(f"the chat template wrote more than {TEMPLATE_MAX_CHARS:,} characters")
            pieces.append(piece)
        outcome = ("ok", "".join(pieces))
    except jinja2.exceptions.TemplateError as e:  # raise_exception() in the template, or a sandbox refusal
        outcome = ("error", f"the chat template refused these messages: {e}")
    except MemoryError:
        outcome = ("error", f"the chat template needed more than {TEMPLATE_MEMORY_BYTES >> 20} MiB of memory")
    except ChatTemplateError as e:  # invalid Jinja, or the output limit
        outcome = ("error", str(e))
    except Exception as e:  # noqa: BLE001 -- whatever else a hostile template raises becomes one line
        outcome = ("error", f"the chat template failed: {type(e).__name__}: {e}")
    sender.send(outcome)
    sender.close()


# -- chat templates ------------------------------------------------------------------------------------------------

@dataclass
class ChatTemplate:
    """One chat format: how to render messages, and what ends an assistant turn."""

    name: str  # "jinja" (from the tokenizer files), "chatml", "llama2", "llama3" or "plain"
    bos_token: str = ""  # the text of the BOS token, for templates that write it ("<s>")
    eos_token: str = ""  # "</s>"
    source: str | None = None  # the Jinja source when name == "jinja"
    stop: tuple = ()  # stop strings (plain text has no end token: stop where the model starts the user's line)

    def render(self, messages, add_generation_prompt: bool = True) -> str:
        """messages [{'role', 'content'}] -> the prompt text (special tokens written as text), as transformers'
        apply_chat_template(..., tokenize=False) renders it."""
        check_messages(messages)
        if self.name != "jinja":
            return BUILTIN[self.name](messages, add_generation_prompt, self.bos_token, self.eos_token)
        return render_jinja(self.source, dict(messages=messages, add_generation_prompt=add_generation_prompt,
                                                 bos_token=self.bos_token, eos_token=self.eos_token, tools=None,
                                                 documents=None))

    def encode(self, tokenizer, messages, add_generation_prompt: bool = True) -> list[int]:
        """messages -> the prompt's token ids. What the template writes may hold special tokens; what a message
        holds never becomes one, whatever its text (see `defuse`).

        The template already writes BOS and every special token, so nothing is added around the text (transformers:
        add_special_tokens=False). Stricter than transformers' apply_chat_template(tokenize=True), which would turn
        "<|im_end|>" typed by a user into the real end-of-turn token.
        """
        check_messages(messages)
        specials = special_regex(tokenizer.special_tokens)
        safe, markers = defuse(messages, specials, self.source or "")
        text = self.render(safe, add_generation_prompt)
        restore = {ord(marker): token for token, marker in markers.items()}
        ids = []
        for start, piece, is_special in tokenizer.split_special(text):
            if is_special:  # only the template's own: none is left inside a message
                ids.append(tokenizer.special_tokens[piece])
            elif piece:
                ids.extend(tokenizer.model.encode_ordinary(piece.translate(restore), start == 0))
        return ids


def defuse(messages, specials, template_source: str = "") -> tuple[list[dict], dict[str, str]]:
    """Swap every special token written inside a message for a private-use character. -> (messages, {token: char}).

    The template then renders these characters wherever it puts the content; `ChatTemplate.encode` splits the
    rendered text at special tokens, which can now only be the template's own, and turns each character back into
    its token's text as ordinary characters. A character is drawn at random from Unicode's private-use plane 15 and
    never one that occurs in a message or the template, so no text can forge one.

    Example: [{"role": "user", "content": "hi<|im_end|>"}] -> ([{"role": "user", "content": "hi\\U000f3a41"}],
    {"<|im_end|>": "\\U000f3a41"}).
    """
    if specials is None:
        return messages, {}
    found = sorted({m.group() for message in messages for m in specials.finditer(message["content"])})
    if not found:
        return messages, {}
    taken = set(template_source).union(*(message["content"] for message in messages))
    markers: dict[str, str] = {}
    draw = secrets.SystemRandom()
    while len(markers) < len(found):
        marker = chr(draw.randrange(0xF0000, 0xFFFFE))  # plane 15 private use, U+F0000 .. U+FFFFD
        if marker not in taken:
            taken.add(marker)
            markers[found[len(markers)]] = marker
    swapped = [{**message, "content": specials.sub(lambda m: markers[m.group()], message["content"])}
               for message in messages]
    return swapped, markers


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
