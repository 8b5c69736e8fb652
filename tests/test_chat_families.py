"""The chat templates of the families nanollm runs render and tokenize as transformers does, and end their turns.

Each family is a real tokenizer from ../shared/data and the family's official chat template, as its hub repository's
tokenizer_config.json holds it (Qwen3's and Gemma 3's are the shared files themselves). Both nanollm and
transformers load the same files (``load_family``). For every conversation:

* ``ChatTemplate.render`` (nanollm's jinja2 sandbox, in a child process) equals transformers'
  ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``, or both refuse the conversation
  (Gemma 1/2 take no system message; Mistral's roles must alternate);
* ``ChatTemplate.encode`` equals the ids of that text with the special tokens the template wrote (no message here
  holds one), without BOS added again: transformers' ids, or tokenizers' on the same tokenizer.json for the
  families whose transformers 5 class rebuilds the file's pipeline (``REBUILT``, below);
* ``turn_end_ids`` holds the token that ends the family's assistant turn, so generation stops there.

Families and their turn-end tokens:

    Qwen3, Qwen2.5              <|im_end|>      (ChatML; Qwen2.5 adds a default system message)
    Gemma 3, Gemma 1 and 2      <end_of_turn>   (roles user/model; Gemma 3 folds a system message into the first turn)
    Llama 3, 3.1, 3.2           <|eot_id|>      (3.1 and 3.2 write a system header with dates; <|eom_id|> ends a
                                                 tool call in 3.1+)
    Mistral v0.1, v0.3          </s>            ([INST] ... [/INST])
    Phi-3                       <|end|>         (<|user|>, <|assistant|>, <|system|>)
    OLMo-2                      <|endoftext|>   (Tülu's <|user|> lines; the turn ends with EOS)

What the tokenizers stand in for: Gemma 1/2's vocabulary is Gemma 3's but for added tokens, Qwen2.5's is Qwen3's,
Llama 3 and 3.1's are Llama 3.2's; Mistral v0.3's adds control tokens such as [INST] that v0.1's spells as text.
Phi-3's tokenizer is Llama 2's SentencePiece layout (here Mistral v0.1's file of that layout) with its chat tokens
added, marked rstrip as in the real files (each takes the white space after it: the "\n" its template writes).
OLMo-2's is cl100k-based; here GPT-2's, with <|endoftext|> as its BOS and EOS as in OLMo-2's config. Llama 3.2's
template prints today's date: both sides render within the same second.
"""
import json
import shutil
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

import pytest

from nanollm.chat import ChatTemplate, ChatTemplateError, chat_template_for, turn_end_ids
from nanollm.tokenizer import Tokenizer, load_tokenizer
from tests.test_chat import CONVERSATIONS as BASIC_CONVERSATIONS
from tests.conftest import shared_file
from tests.generation_fixtures import write_gpt2_tokenizer_files

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

# -- the official templates, as the hub repositories' tokenizer_config.json hold them (JSON-decoded) ---------------

# meta-llama/Meta-Llama-3-8B-Instruct
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")

# meta-llama/Llama-3.1-8B-Instruct and Llama-3.2-*-Instruct: their common text, with the parts they differ in
# marked @DATE@, @SYSTEM@ and @TOOL_CALL@ (filled in below)
LLAMA3X = (Path(__file__).parent / "chat_templates" / "llama3x.jinja").read_text(encoding="utf-8")

# Llama 3.1's and 3.2's official templates are LLAMA3X with three parts filled in: 3.2 takes today's date from
# strftime_now, writes no built-in tools into the system message, and writes tool calls always as JSON ending in
# <|eot_id|> (3.1: <|python_tag|> calls of built-in tools ending in <|eom_id|>).
LLAMA31_DATE = r"""{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}"""
LLAMA32_DATE = r"""{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}"""
LLAMA31_SYSTEM = r"""{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}"""
LLAMA32_SYSTEM = r"""{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}"""
LLAMA31_TOOL_CALL = r"""        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
"""
LLAMA32_TOOL_CALL = r"""        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
"""
LLAMA31 = LLAMA3X.replace("@DATE@", LLAMA31_DATE).replace("@SYSTEM@", LLAMA31_SYSTEM).replace(
    "@TOOL_CALL@", LLAMA31_TOOL_CALL)
LLAMA32 = LLAMA3X.replace("@DATE@", LLAMA32_DATE).replace("@SYSTEM@", LLAMA32_SYSTEM).replace(
    "@TOOL_CALL@", LLAMA32_TOOL_CALL)

# mistralai/Mistral-7B-Instruct-v0.1 (its current template, which takes a system message)
MISTRAL_V01 = r"""{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

# mistralai/Mistral-7B-Instruct-v0.3
MISTRAL_V03 = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

# microsoft/Phi-3-mini-4k-instruct
PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
        "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

# google/gemma-7b-it and google/gemma-2-2b-it
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

# Qwen/Qwen2.5-0.5B-Instruct
QWEN25 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# allenai/OLMo-2-1124-7B-Instruct and allenai/OLMo-2-0425-1B-Instruct
OLMO2 = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n' + "
         "message['content'] + '\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + "
         "'\n' }}{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>\n'  + "
         "message['content'] + eos_token + '\n' }}{% else %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}"
         "{% endif %}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
         "{% endfor %}")

PHI3_TOKENS = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
               "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]

# family -> (base tokenizer, what its tokenizer_config.json changes, the token that ends an assistant turn)
FAMILIES = {
    "qwen3": ("qwen3", {}, "<|im_end|>"),
    "qwen2.5": ("qwen3", {"chat_template": QWEN25}, "<|im_end|>"),
    "gemma3": ("gemma3", {}, "<end_of_turn>"),
    "gemma2": ("gemma3", {"chat_template": GEMMA}, "<end_of_turn>"),
    "llama3": ("llama3.2", {"chat_template": LLAMA3}, "<|eot_id|>"),
    "llama3.1": ("llama3.2", {"chat_template": LLAMA31}, "<|eot_id|>"),
    "llama3.2": ("llama3.2", {"chat_template": LLAMA32}, "<|eot_id|>"),
    "mistral-v0.1": ("mistral-v0.1", {"chat_template": MISTRAL_V01}, "</s>"),
    "mistral-v0.3": ("mistral-v0.1", {"chat_template": MISTRAL_V03}, "</s>"),
    "phi3": ("phi3", {"chat_template": PHI3, "bos_token": "<s>", "eos_token": "<|endoftext|>"}, "<|end|>"),
    "olmo2": ("gpt2", {"chat_template": OLMO2, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                       "pad_token": "<|pad|>"}, "<|endoftext|>"),
}
# Families whose transformers 5 class (LlamaTokenizer) rebuilds the pipeline instead of reading the tokenizer.json's
# (a Metaspace pre-tokenizer where the file has Prepend + Replace normalizers: " [INST]" after <s> loses a "▁"), so
# their ids are checked against tokenizers on the same file; their rendering is still transformers'.
REBUILT = {"mistral-v0.1", "mistral-v0.3", "phi3"}

CONVERSATIONS = BASIC_CONVERSATIONS[:2] + [  # test_chat.py's first two, then turns that cut more kinds of text
    [{"role": "user", "content": "Line one\nline two"}, {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "emoji 🤗, digits 12345 and <b>html</b>\n\n"}],
    [{"role": "system", "content": "Réponds en français."}, {"role": "user", "content": "Quel temps fait-il ?"}],
]


# -- building the directories --------------------------------------------------------------------------------------

# The three large tokenizer files are loaded once each (a few seconds apiece), from their shared directories; the
# families that change their template get it handed to both libraries instead (transformers' chat_template
# argument; none of these templates writes the EOS token, the other thing their configs change). The other families
# are directories of their own, read end to end.
SHARED_BASES = ("qwen3", "gemma3", "llama3.2")


@dataclass
class Family:
    name: str
    ours: Tokenizer
    template: ChatTemplate  # nanollm's
    render: Callable[[list[dict]], str]  # transformers' apply_chat_template(tokenize=False, add_generation_prompt)
    ids: Callable[[str], list[int]]  # the reference ids of a rendered text, its special tokens parsed, no BOS added


def write_base(directory, base: str):
    """The tokenizer files of ``base`` in ``directory``: a shared directory copied, or one made from shared files."""
    directory.mkdir(parents=True)
    if base == "gpt2":  # transformers' GPT2Tokenizer over GPT-2's files, as a hub repository saves it
        source = directory / "source"
        source.mkdir()
        write_gpt2_tokenizer_files(source)
        tokenizer = transformers.GPT2Tokenizer.from_pretrained(source)
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        tokenizer.save_pretrained(directory)
        shutil.rmtree(source)
        (directory / "chat_template.jinja").unlink(missing_ok=True)
        return
    source = shared_file("tokenizers/mistral-v0.1")  # Phi-3's is the same layout, with its chat tokens added
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, directory / name)
    if base == "phi3":  # Phi-3's chat tokens after Llama 2's 32,000 pieces (ids 32000..32010, by tokenizers' rule)
        spec = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        # as in Phi-3-mini's tokenizer.json: every chat token but <|endoftext|> takes the white space after it
        spec["added_tokens"] += [{"id": 32000 + i, "content": token, "single_word": False, "lstrip": False,
                                  "rstrip": token != "<|endoftext|>", "normalized": False, "special": True}
                                 for i, token in enumerate(PHI3_TOKENS)]
        (directory / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")


def write_family(directory, family: str):
    """A directory holding ``family``'s tokenizer and its tokenizer_config.json (a small base: see SHARED_BASES)."""
    base, changes, _ = FAMILIES[family]
    write_base(directory, base)
    config_path = directory / "tokenizer_config.json"
    config = {key: value for key, value in json.loads(config_path.read_text(encoding="utf-8")).items()
              if key != "added_tokens_decoder" or base != "phi3"}  # Phi-3's tokenizer.json lists them all
    config_path.write_text(json.dumps({**config, **changes}), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def shared_base():
    """base -> (nanollm, transformers, tokenizers) on a shared directory, each loaded on first use and freed with
    this module (the three hold about a gigabyte)."""
    loaded = {}

    def get(base: str):
        if base not in loaded:
            directory = shared_file(f"tokenizers/{base}")
            loaded[base] = (load_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(directory),
                            tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json")))
        return loaded[base]

    return get


def reference_ids(name: str, theirs, reference) -> Callable[[str], list[int]]:
    if name in REBUILT:
        return lambda text: reference.encode(text, add_special_tokens=False).ids
    return lambda text: theirs(text, add_special_tokens=False)["input_ids"]


def load_family(name: str, shared_base, tmp_path_factory) -> Family:
    base, changes, _ = FAMILIES[name]
    if base in SHARED_BASES:
        ours, theirs, reference = shared_base(base)
        source = changes.get("chat_template")
        from_files = chat_template_for(ours)
        template = ChatTemplate("jinja", from_files.bos_token, from_files.eos_token, source=source) if source \
            else from_files
        options = {"chat_template": source} if source else {}
    else:
        directory = write_family(tmp_path_factory.mktemp("chat") / name, name)
        ours, theirs = load_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(directory)
        reference = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        template, options = chat_template_for(ours), {}
        assert template.name == "jinja" and template.source == theirs.chat_template == changes["chat_template"]
    return Family(name, ours, template, lambda messages: theirs.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **options), reference_ids(name, theirs, reference))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, shared_base, tmp_path_factory) -> Family:
    return load_family(request.param, shared_base, tmp_path_factory)


# -- the checks ------------------------------------------------------------------------------------------------------


def test_templates_from_the_shared_files_are_read(shared_base):
    """Qwen3's and Gemma 3's templates are the shared tokenizer_config.json's own, read by nanollm as transformers
    reads them; the families in directories of their own check the same where they are loaded."""
    for base in ("qwen3", "gemma3"):
        ours, theirs, _ = shared_base(base)
        template = chat_template_for(ours)
        assert template.name == "jinja" and template.source == theirs.chat_template


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_render_and_ids_equal_transformers(family, conversation):
    messages = CONVERSATIONS[conversation]
    try:
        expected = family.render(messages)
    except Exception as refusal:  # jinja2's TemplateError, from the template's raise_exception
        with pytest.raises(ChatTemplateError, match="refused"):
            family.template.render(messages)
        assert "not supported" in str(refusal) or "alternate" in str(refusal)
        return
    assert family.template.render(messages) == expected
    assert family.template.encode(family.ours, messages) == family.ids(expected)


def test_turn_end_token_stops_generation(family):
    """The engine stops a chat reply on every id of turn_end_ids (generate.run_chat): the family's turn-end token
    must be one of them."""
    end = FAMILIES[family.name][2]
    assert family.ours.special_tokens[end] in turn_end_ids(family.ours)


def test_llama3_tool_call_end_stops_generation(shared_base):
    """Llama 3.1 and 3.2 end an assistant message that calls a built-in tool with <|eom_id|> ("end of message",
    then the tool's answer comes), which their generation_config.json lists among the EOS ids."""
    ours = shared_base("llama3.2")[0]
    assert ours.special_tokens["<|eom_id|>"] in turn_end_ids(ours)


def test_mistral_rebuilt_by_transformers_differs_only_after_bos(tmp_path_factory):
    """What REBUILT stands for, measured: transformers 5 and the tokenizer.json disagree on the text after <s> that
    starts with a space (Mistral v0.1's " [INST]"), and agree once that space is gone."""
    directory = write_family(tmp_path_factory.mktemp("chat") / "mistral", "mistral-v0.1")
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    reference = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    text = theirs.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<s> [INST]")
    assert theirs(text, add_special_tokens=False)["input_ids"] != reference.encode(text, add_special_tokens=False).ids
    trimmed = "<s>" + text[len("<s> "):]
    assert theirs(trimmed, add_special_tokens=False)["input_ids"] == reference.encode(
        trimmed, add_special_tokens=False).ids
