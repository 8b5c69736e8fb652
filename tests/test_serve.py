"""nanollm.serve through the official openai client: the text, finish reasons, usage and logprobs of every endpoint,
plain and streamed, equal what nanollm.generate gives for the same settings; many concurrent streams each get their
own text; a new request joins the running ones instead of waiting for them; /metrics counts what happened.
"""
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nanollm
from nanollm.serve.scheduler import FINISH_REASONS, logprobs_of
from tests.conftest import time_limit
from tests.generation_fixtures import write_family
from tests.hf_models import Options, build_checkpoint
from tests.serve_fixtures import NAME, chat_reference, client, demo_model, metrics, serving, slowed, wait_until

PROMPTS = ("Once upon a time", "The for statement", "def main():", "Python is", "A list comprehension")


@pytest.fixture(scope="module")
def model():
    return demo_model()


@pytest.fixture(scope="module")
def server(model):
    with serving(model, max_batch=8, max_queue=64) as s:
        yield s


@pytest.fixture(scope="module")
def api(server):
    return client(server)


def completion_text(api, stream: bool, **request) -> tuple[list[str], list[str], dict | None]:
    """-> (each choice's text, each choice's finish reason, usage) of a completion, streamed or whole."""
    if not stream:
        r = api.completions.create(model=NAME, **request)
        assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.created > 0
        return [c.text for c in r.choices], [c.finish_reason for c in r.choices], r.usage.model_dump()
    texts, finish, usage = {}, {}, None
    for chunk in api.completions.create(model=NAME, stream=True, stream_options={"include_usage": True}, **request):
        usage = chunk.usage.model_dump() if chunk.usage else usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            finish[c.index] = c.finish_reason or finish.get(c.index)
    return [texts[i] for i in sorted(texts)], [finish[i] for i in sorted(finish)], usage


def chat_text(api, stream: bool, **request) -> tuple[list[str], list[str], dict | None]:
    if not stream:
        r = api.chat.completions.create(model=NAME, **request)
        assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
        assert all(c.message.role == "assistant" for c in r.choices)
        return [c.message.content for c in r.choices], [c.finish_reason for c in r.choices], r.usage.model_dump()
    texts, finish, usage, roles = {}, {}, None, set()
    for chunk in api.chat.completions.create(model=NAME, stream=True, stream_options={"include_usage": True},
                                             **request):
        usage = chunk.usage.model_dump() if chunk.usage else usage
        for c in chunk.choices:
            roles.add(c.delta.role) if c.delta.role else None
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            finish[c.index] = c.finish_reason or finish.get(c.index)
    assert roles == {"assistant"}  # the first delta of each choice names its role, as OpenAI streams
    return [texts[i] for i in sorted(texts)], [finish[i] for i in sorted(finish)], usage


def reference(model, prompt, n: int, **options):
    """generate's results for a request of n choices: one prompt, or the batch of n copies of it (one seeded
    generator drawing for every row, as the server's one Batch per request does)."""
    results = model.generate(prompt if n == 1 else [prompt] * n, **options)
    return results if n > 1 else [results]


def expected_usage(prompt_ids, results) -> dict:
    completion = sum(len(r.token_ids) for r in results)
    return {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
            "total_tokens": len(prompt_ids) + completion, "completion_tokens_details": None,
            "prompt_tokens_details": None}


def test_models_lists_the_one_model(api, model):
    models = api.models.list().data
    assert [m.id for m in models] == [NAME] and models[0].owned_by == "nanollm"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=0.9, top_p=0.9, seed=11)],
                         ids=["greedy", "seeded"])
def test_completions_equal_generate(api, model, stream, sampling):
    with time_limit(30):
        texts, finish, usage = completion_text(api, stream, prompt=PROMPTS[0], max_tokens=40, **sampling)
    r = model.generate(PROMPTS[0], max_new_tokens=40, **sampling)
    assert texts == [r.text] and finish == [FINISH_REASONS[r.finish_reason]]
    assert usage == expected_usage(r.prompt_ids, [r])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=0.8, top_p=0.95, seed=5)],
                         ids=["greedy", "seeded"])
def test_chat_equals_generate_on_the_chat_template(api, model, stream, sampling):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi <|endoftext|>"}]
    with time_limit(30):
        texts, finish, usage = chat_text(api, stream, messages=messages, max_tokens=30, **sampling)
    ids, options = chat_reference(model, messages, **sampling)
    r = model.generate(ids, max_new_tokens=30, **options)
    assert texts == [r.text] and finish == [FINISH_REASONS[r.finish_reason]]
    assert usage == expected_usage(ids, [r])  # the typed <|endoftext|> stayed text: not the id 1023


def test_chat_without_max_tokens_may_fill_the_context(api, model):
    """Chat's max_tokens defaults to the rest of the context (as vLLM); the demo model stops on its own first."""
    messages = [{"role": "user", "content": "Write"}]
    r = api.chat.completions.create(model=NAME, messages=messages, temperature=0)
    ids, options = chat_reference(model, messages, temperature=0)
    expected = model.generate(ids, max_new_tokens=model.config.max_seq_len - len(ids), **options)
    assert r.choices[0].message.content == expected.text


def test_a_stop_string_ends_the_choice_and_is_not_shown(api, model):
    r = model.generate(PROMPTS[0], max_new_tokens=40, temperature=0)
    stop = r.text[10:13]  # a string the greedy text contains
    texts, finish, _ = completion_text(api, False, prompt=PROMPTS[0], max_tokens=40, temperature=0, stop=[stop])
    assert texts == [model.generate(PROMPTS[0], max_new_tokens=40, temperature=0, stop=stop).text]
    assert stop not in texts[0] and finish == ["stop"]


@settings(max_examples=25)
@given(prompt=st.sampled_from(PROMPTS), stream=st.booleans(), n=st.integers(1, 3), chat=st.booleans(),
       max_tokens=st.integers(1, 24), temperature=st.sampled_from([0, 0.3, 0.9, 1.6]),
       top_p=st.sampled_from([None, 0.5, 0.9]), top_k=st.sampled_from([None, 0, 5, 40]),
       min_p=st.sampled_from([None, 0.05]), repetition_penalty=st.sampled_from([None, 1.0, 1.4]),
       presence=st.sampled_from([None, -0.5, 1.0]), frequency=st.sampled_from([None, 0.5]),
       bias=st.dictionaries(st.integers(0, 1023), st.sampled_from([-100, -3, 4]), max_size=3),
       stop=st.sampled_from([None, ["\n"], ["e", "a"]]), seed=st.integers(0, 2**32))
def test_any_settings_give_generates_text(api, model, prompt, stream, n, chat, max_tokens, temperature, top_p,
                                          top_k, min_p, repetition_penalty, presence, frequency, bias, stop, seed):
    """Every choice of every request, whatever its settings, is what generate gives for the same settings."""
    extra = {k: v for k, v in dict(top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty).items()
             if v is not None}
    openai_fields = {k: v for k, v in dict(top_p=top_p, presence_penalty=presence, frequency_penalty=frequency,
                                           stop=stop, logit_bias={str(k): v for k, v in bias.items()} or None
                                           ).items() if v is not None}
    options = dict(max_new_tokens=max_tokens, temperature=temperature, seed=seed, **extra, top_p=top_p,
                   presence_penalty=presence, frequency_penalty=frequency, logit_bias=bias, stop=stop or ())
    request = dict(max_tokens=max_tokens, temperature=temperature, seed=seed, n=n, extra_body=extra,
                   **openai_fields)
    with time_limit(30):
        if chat:
            messages = [{"role": "user", "content": prompt}]
            texts, finish, _ = chat_text(api, stream, messages=messages, **request)
            ids, options = chat_reference(model, messages, **options)
        else:
            texts, finish, _ = completion_text(api, stream, prompt=prompt, **request)
            ids = prompt
    results = reference(model, ids, n, **options)
    assert texts == [r.text for r in results]
    assert finish == [FINISH_REASONS[r.finish_reason] for r in results]


def test_a_batch_of_prompts_gives_each_its_choices_in_openai_order(api, model):
    """prompt: [a, b], n=2 -> choices a0 a1 b0 b1, each what generate gives for that batch."""
    texts, _, usage = completion_text(api, False, prompt=list(PROMPTS[:2]), n=2, max_tokens=12, temperature=0.7,
                                      seed=3)
    results = model.generate([PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]], max_new_tokens=12, temperature=0.7,
                             seed=3)
    assert texts == [r.text for r in results]
    assert usage["prompt_tokens"] == len(results[0].prompt_ids) + len(results[2].prompt_ids)


def torch_logprobs(model, prompt_ids, new_ids) -> np.ndarray:
    """The model's log-probabilities at each new token's position, from model.forward over the whole sequence and
    torch's log_softmax: (n, V)."""
    logits = model.forward([list(prompt_ids) + list(new_ids)])[0]  # (T, V)
    positions = torch.tensor(logits[len(prompt_ids) - 1 : -1], dtype=torch.float64)  # (n, V)
    return torch.log_softmax(positions, dim=-1).numpy()


def test_completion_logprobs_are_the_models_own(api, model):
    r = api.completions.create(model=NAME, prompt=PROMPTS[1], max_tokens=12, temperature=0.7, seed=2, logprobs=5)
    ref = model.generate(PROMPTS[1], max_new_tokens=12, temperature=0.7, seed=2)
    expected = torch_logprobs(model, ref.prompt_ids, ref.token_ids)  # (n, V)
    lp = r.choices[0].logprobs
    assert lp.tokens == [model.tokenizer.decode([t]) for t in ref.token_ids]
    np.testing.assert_allclose(lp.token_logprobs, expected[np.arange(len(ref.token_ids)), ref.token_ids], atol=1e-4)
    for row, top in zip(expected, lp.top_logprobs):
        best = np.argsort(-row)[:5]
        assert list(top) == [model.tokenizer.decode([i]) for i in best]
        np.testing.assert_allclose(list(top.values()), row[best], atol=1e-4)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_are_the_models_own_with_bytes(api, model, stream):
    messages = [{"role": "user", "content": "Hello"}]
    request = dict(model=NAME, messages=messages, max_tokens=10, temperature=1.2, seed=9, logprobs=True,
                   top_logprobs=3)
    if stream:
        entries = [e for chunk in api.chat.completions.create(stream=True, **request) for c in chunk.choices
                   if c.logprobs for e in c.logprobs.content]
    else:
        entries = api.chat.completions.create(**request).choices[0].logprobs.content
    ids, options = chat_reference(model, messages, temperature=1.2, seed=9)
    ref = model.generate(ids, max_new_tokens=10, **options)
    expected = torch_logprobs(model, ids, ref.token_ids)
    assert len(entries) == len(ref.token_ids)
    for entry, token, row in zip(entries, ref.token_ids, expected):
        assert bytes(entry.bytes) == model.tokenizer.token_to_bytes(token)
        assert entry.logprob == pytest.approx(row[token], abs=1e-4)
        assert [bytes(t.bytes) for t in entry.top_logprobs] == \
            [model.tokenizer.token_to_bytes(i) for i in np.argsort(-row)[:3]]


def test_logprobs_of_by_hand():
    """raw logits [0, ln 3]: probabilities 1/4 and 3/4, so token 0 has ln 1/4 and the top one is token 1."""
    logprob, top = logprobs_of(np.array([0.0, np.log(3.0)], dtype=np.float32), 0, 1)
    assert logprob == pytest.approx(np.log(0.25)) and top[0][0] == 1 and top[0][1] == pytest.approx(np.log(0.75))


@pytest.mark.parametrize("clients", [8, 32])
def test_concurrent_streams_each_get_their_own_text(api, model, clients):
    """Many streaming requests at once, chat and completions, each with its own prompt, length and seed."""
    results, errors = [None] * clients, []

    def run(i):
        try:
            request = dict(max_tokens=8 + i % 13, temperature=0.8, seed=i)
            if i % 2:
                results[i] = chat_text(api, True, messages=[{"role": "user", "content": PROMPTS[i % 5]}], **request)
            else:
                results[i] = completion_text(api, True, prompt=PROMPTS[i % 5], **request)
        except Exception as e:  # noqa: BLE001 -- reported below with its client's number
            errors.append((i, repr(e)))

    with time_limit(60):
        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert not errors, errors
    for i, (texts, finish, usage) in enumerate(results):
        options = dict(max_new_tokens=8 + i % 13, temperature=0.8, seed=i)
        if i % 2:
            ids, options = chat_reference(model, [{"role": "user", "content": PROMPTS[i % 5]}], **options)
            r = model.generate(ids, **options)
        else:
            r = model.generate(PROMPTS[i % 5], **options)
        assert texts == [r.text] and finish == [FINISH_REASONS[r.finish_reason]], i
        assert usage["completion_tokens"] == len(r.token_ids), i


def test_a_new_request_joins_the_running_ones_instead_of_waiting():
    """Iteration-level scheduling: a short request sent while a long one runs finishes long before it does."""
    with serving(slowed(demo_model(), 0.01), max_batch=4) as server, time_limit(30):
        api, done = client(server), {}

        def long():
            api.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=150, temperature=0)
            done["long"] = time.monotonic()

        thread = threading.Thread(target=long)
        thread.start()
        wait_until(lambda: metrics(server)["nanollm_generation_tokens_total"] >= 5, what="the long request's start")
        api.completions.create(model=NAME, prompt=PROMPTS[1], max_tokens=3, temperature=0)
        done["short"] = time.monotonic()
        thread.join()
    assert done["short"] < done["long"] - 0.5, done  # 150 steps of >= 10 ms: the short one was not queued behind


def test_metrics_count_requests_tokens_and_latencies(api, server):
    before = metrics(server)
    texts = [completion_text(api, stream, prompt=PROMPTS[2], max_tokens=6, temperature=0)[0] for stream in (0, 1)]
    after = metrics(server)
    assert texts[0] == texts[1]
    assert after["nanollm_requests_running"] == 0 and after["nanollm_requests_waiting"] == 0

    def grew(name):
        return after[name] - before.get(name, 0)

    assert grew('nanollm_requests_total{outcome="finished"}') == 2
    assert grew("nanollm_generation_tokens_total") == 12  # both ran to max_tokens (the demo's greedy text here)
    assert grew("nanollm_time_to_first_token_seconds_count") == 2
    assert grew("nanollm_time_per_output_token_seconds_count") == 10  # 5 gaps after each first token
    assert grew('nanollm_time_to_first_token_seconds_bucket{le="+Inf"}') == 2
    assert after["nanollm_generation_tokens_per_second"] > 0


def test_chat_on_a_jinja_template_model_stops_at_its_turn_end(tmp_path_factory):
    """A ChatML model whose template is Jinja (rendered in a forked child, here from the threaded server): the reply
    equals generate's on the template's ids, a typed <|im_end|> stays text, and the real one (id 50258, pushed up by
    a logit bias) ends the turn as a stop, never shown."""
    directory = tmp_path_factory.mktemp("chatml")
    build_checkpoint(directory, Options(arch="gpt2", vocab_size=50259, seed=4, init_std=0.3))
    write_family(directory, "chatml")
    model = nanollm.load(directory)
    messages = [{"role": "user", "content": "Hi <|im_end|> there"}]
    with serving(model) as server, time_limit(60):
        api = client(server)
        plain = api.chat.completions.create(model=NAME, messages=messages, max_tokens=5, temperature=0)
        ended = api.chat.completions.create(model=NAME, messages=messages, max_tokens=5, temperature=0,
                                            logit_bias={"50258": 50})
    ids, options = chat_reference(model, messages, temperature=0)
    assert ids.count(50258) == 1  # the template's own end of the user turn; the typed one is ordinary text
    assert plain.choices[0].message.content == model.generate(ids, max_new_tokens=5, **options).text
    assert plain.usage.prompt_tokens == len(ids)
    assert ended.choices[0].message.content == "" and ended.choices[0].finish_reason == "stop"
    assert ended.usage.completion_tokens == 1
