"""Lesson 12: chat is one text, written by a template; every turn sends the whole conversation again."""
from ..chat import chat_template_for
from .lesson import demo_model, heading, say

QUESTIONS = ("What does the for statement do?", "And the while statement?")
SYSTEM = "You answer from the Python documentation."


def run() -> None:
    model = demo_model()
    tok = model.tokenizer
    chatml = chat_template_for(tok, "chatml")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
    heading("1. A model sees no messages, only text: ChatML (Qwen, SmolLM) renders the conversation as")
    print(chatml.render(messages))
    template = chat_template_for(tok)
    say(f"The demo model has no chat tokens (only {list(tok.special_tokens)}), so chat_template_for picks "
        f"{template.name!r}: lines a base model can continue, stopping at {template.stop}.")

    heading("2. Two turns with the demo model: each prompt holds everything said so far")
    previous = ""
    for n, question in enumerate(QUESTIONS, start=1):
        if n > 1:
            messages.append({"role": "user", "content": question})
        ids = template.encode(tok, messages)
        text = template.render(messages)
        out = model.generate(ids, max_new_tokens=16, temperature=0, stop=template.stop)
        repeats = f"; it begins with turn {n - 1}'s prompt and reply: {text.startswith(previous)}" if n > 1 else ""
        say(f"turn {n}: the prompt is {len(ids)} tokens{repeats}")
        print("  " + text.replace("\n", "\n  ") + f"[{out.text.strip()!r}]")
        messages.append({"role": "assistant", "content": out.text.strip()})
        previous = template.render(messages, add_generation_prompt=False)
    say("The model keeps nothing between turns: turn 2 pays again for turn 1's tokens (prefill grows every turn). "
        "Servers keep the KV cache of a conversation's prefix to avoid that (prefix caching); nanollm does not.")
