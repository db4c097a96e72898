"""Tool calling through the official `openai` Python SDK against a running novastack
server whose model is a tiny random one with the real Qwen3 chat template: `required`
and named calls come from constrained decoding, so they must always validate.

Run by tests/tests/openai_sdk.rs with NOVASTACK_BASE_URL, NOVASTACK_KEY and
NOVASTACK_MODEL. Needs `openai` and `jsonschema`.
Prints one line per check; exits non-zero if any failed.
"""

import json

import jsonschema
import openai
from openai import OpenAI
from sdk_checks import BASE, KEY, MODEL, check, run


client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=120)
MESSAGES = [{"role": "user", "content": "What is the weather in Paris, and the time in Tokyo?"}]
PARAMS = {
    "get_weather": {
        "type": "object",
        "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 12},
                       "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "get_time": {
        "type": "object",
        "properties": {"tz": {"type": "string", "pattern": "^[A-Z][a-z]{1,8}/[A-Z][a-z]{1,8}$"}},
        "required": ["tz"],
        "additionalProperties": False,
    },
}
TOOLS = [{"type": "function", "function": {"name": n, "description": f"The {n[4:]}", "parameters": p}}
         for n, p in PARAMS.items()]
SAMPLINGS = [dict(temperature=0)] + [dict(temperature=1.0, seed=s) for s in range(4)]


def valid_call(name, arguments):
    assert name in PARAMS, name
    jsonschema.validate(json.loads(arguments), PARAMS[name])


@check
def required_calls_always_validate():
    for kw in SAMPLINGS:
        for parallel in (True, False):
            r = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                               parallel_tool_calls=parallel, max_tokens=800, **kw)
            c = r.choices[0]
            assert c.finish_reason == "tool_calls", (kw, c.finish_reason, c.message)
            calls = c.message.tool_calls
            assert calls and len(calls) <= (8 if parallel else 1), calls
            for call in calls:
                assert call.type == "function" and call.id.startswith("call_"), call
                valid_call(call.function.name, call.function.arguments)


@check
def a_named_function_is_always_called_validly():
    for kw in SAMPLINGS:
        r = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=200,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}}, **kw)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None, c
        [call] = c.message.tool_calls
        assert call.function.name == "get_time"
        valid_call("get_time", call.function.arguments)


@check
def streamed_calls_come_as_deltas_and_equal_the_json_answer():
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        kw = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=choice, max_tokens=800, temperature=0)
        full = client.chat.completions.create(**kw).choices[0].message.tool_calls
        calls, finish, fragments = {}, None, 0
        for chunk in client.chat.completions.create(stream=True, **kw):
            for c in chunk.choices:
                finish = c.finish_reason or finish
                for d in c.delta.tool_calls or []:
                    if d.index not in calls:
                        # The first delta of a call carries its id, type and name.
                        assert d.id and d.type == "function" and d.function.name, d
                        calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": ""}
                    fragments += bool(d.function.arguments)
                    calls[d.index]["arguments"] += d.function.arguments or ""
        assert finish == "tool_calls", finish
        # Forced calls stream as they are written: the arguments come in many pieces,
        # and joined they are exactly the JSON answer's.
        assert fragments > len(calls) * 2, fragments
        got = [(c["name"], c["arguments"]) for _, c in sorted(calls.items())]
        want = [(c.function.name, c.function.arguments) for c in full]
        assert got == want, (got, want)
        for c in calls.values():
            valid_call(c["name"], c["arguments"])


@check
def a_history_with_tool_calls_and_tool_results_is_accepted():
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21}"},
    ]
    short = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=4,
                                           temperature=0, tool_choice="none")
    r = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=4,
                                       temperature=0, tool_choice="none")
    assert r.choices[0].message.tool_calls is None
    # The call and its result are in the prompt (the template rendered them).
    assert r.usage.prompt_tokens > short.usage.prompt_tokens + 20, (r.usage, short.usage)
    auto = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=8, temperature=0)
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")


@check
def content_parts_equal_the_plain_string():
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the weather "},
                                          {"type": "text", "text": "in Paris, and the time in Tokyo?"}]}]
    a = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0)
    b = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=10, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


@check
def bad_tool_requests_are_400s_naming_the_field():
    cases = [
        (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
        (dict(tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools"),
        (dict(tool_choice="required"), "tool_choice"),
        (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}), "response_format"),
    ]
    for kw, param in cases:
        try:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, **kw)
        except openai.BadRequestError as e:
            assert e.body["param"] == param, (kw, e.body)
        else:
            raise AssertionError(f"no error for {kw}")


run("tool calls")
