"""The official `openai` Python SDK against a running novastack server.

Run by tests/tests/openai_sdk.rs with:
  NOVASTACK_BASE_URL   http://127.0.0.1:PORT/v1  (key: NOVASTACK_KEY, model: NOVASTACK_MODEL)
  NOVASTACK_BUSY_URL   a second server whose queue limit is 0 (every generation: 429)
Prints one line per check; exits non-zero if any failed (sdk_checks.run).
"""

import os

import openai
from openai import OpenAI
from sdk_checks import BASE, KEY, MODEL, check, run

BUSY = os.environ["NOVASTACK_BUSY_URL"]

client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=120)
MESSAGES = [{"role": "user", "content": "Tell me a story."}]


@check
def models_list_and_retrieve():
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids, ids
    assert client.models.retrieve(MODEL).id == MODEL


@check
def chat_non_streaming_with_usage():
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12,
                                       temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "chat.completion"
    assert r.model == MODEL
    c = r.choices[0]
    assert c.message.role == "assistant" and isinstance(c.message.content, str)
    assert c.finish_reason == "length", c.finish_reason
    assert r.usage.completion_tokens == 12, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


@check
def chat_streaming_equals_non_streaming_and_reports_usage():
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0,
              extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kw).choices[0].message.content
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    text, roles, finish, usage, n_chunks = "", [], None, None, 0
    for chunk in stream:
        n_chunks += 1
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            assert chunk.choices == [], chunk
            usage = chunk.usage
            continue
        d = chunk.choices[0].delta
        if d.role:
            roles.append(d.role)
        text += d.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert roles == ["assistant"], roles
    assert text == full, (text, full)
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 20, usage
    assert n_chunks > 3


@check
def streaming_without_include_usage_sends_no_usage_chunk():
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5,
                                            temperature=0, stream=True)
    assert all(c.usage is None for c in stream)


@check
def completions_text_ids_and_logprobs():
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                  temperature=0, logprobs=2, extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    c = r.choices[0]
    assert c.finish_reason == "length"
    assert len(c.logprobs.tokens) == 8 and len(c.logprobs.token_logprobs) == 8
    assert all(len(t) >= 1 for t in c.logprobs.top_logprobs)
    assert all(lp <= 0 for lp in c.logprobs.token_logprobs)
    offs = c.logprobs.text_offset
    assert offs[0] == 0 and offs == sorted(offs) and offs[-1] <= len(c.text), (offs, c.text)
    ids = client.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=4, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert ids.usage.prompt_tokens == 3 and ids.usage.completion_tokens == 4
    many = client.completions.create(model=MODEL, prompt=["a", "b c"], max_tokens=3, temperature=0)
    assert sorted(c.index for c in many.choices) == [0, 1]


@check
def completions_streaming():
    kw = dict(model=MODEL, prompt="The sky is", max_tokens=10, temperature=0,
              extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    text = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
    assert text == full, (text, full)


@check
def stop_strings_cut_the_output_and_never_leak():
    kw = dict(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=40,
              extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    # A stop string from the middle of the greedy answer (at least 2 characters).
    stop = next((full[i:i + 3] for i in range(5, len(full) - 3) if full[i:i + 3].strip()), None)
    assert stop, full
    cut = full[:full.index(stop)]
    r = client.completions.create(stop=[stop], **kw)
    assert r.choices[0].text == cut, (r.choices[0].text, cut, stop)
    assert r.choices[0].finish_reason == "stop"
    # Which stop string matched, as vLLM reports it.
    assert r.choices[0].model_extra.get("stop_reason") == stop, r.choices[0]
    chunks = [c for c in client.completions.create(stop=stop, stream=True, **kw) if c.choices]
    streamed = "".join(c.choices[0].text for c in chunks)
    assert streamed == cut, (streamed, cut)
    assert chunks[-1].choices[0].model_extra.get("stop_reason") == stop, chunks[-1]
    # Without a stop string there is none.
    assert "stop_reason" not in (client.completions.create(**kw).choices[0].model_extra or {})


@check
def chat_logprobs_with_top_alternatives():
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0,
                                       logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob


@check
def n_choices():
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, n=3,
                                       temperature=1.0, seed=7, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens == 18, r.usage
    seen = {}
    for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, n=2,
                                                stream=True, extra_body={"ignore_eos": True}):
        for c in chunk.choices:
            if c.finish_reason:
                seen[c.index] = c.finish_reason
    assert seen == {0: "length", 1: "length"}, seen


@check
def bad_request_errors():
    for kw in [dict(temperature=-1), dict(max_tokens=10**7), dict(n=0), dict(tools=[{"type": "function", "function": {"name": "f"}}])]:
        try:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, **kw)
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["message"], e
        else:
            raise AssertionError(f"no error for {kw}")


@check
def authentication_error():
    bad = OpenAI(base_url=BASE, api_key="wrong", max_retries=0)
    try:
        bad.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    except openai.AuthenticationError as e:
        assert e.status_code == 401
    else:
        raise AssertionError("wrong key accepted")


@check
def not_found_error():
    try:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=2)
    except openai.NotFoundError as e:
        assert "no-such-model" in e.body["message"]
    else:
        raise AssertionError("unknown model accepted")


@check
def rate_limit_error_with_retry_after():
    busy = OpenAI(base_url=BUSY, api_key=KEY, max_retries=0)
    try:
        busy.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    except openai.RateLimitError as e:
        assert e.status_code == 429
        assert e.response.headers.get("retry-after"), e.response.headers
    else:
        raise AssertionError("no 429 from a full queue")


run(f"openai {openai.__version__}")
