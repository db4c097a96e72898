"""The official `anthropic` Python SDK against novastack's `POST /v1/messages`.

Run by tests/tests/openai_sdk.rs with NOVASTACK_BASE_URL (the server root, no /v1),
NOVASTACK_KEY and NOVASTACK_MODEL; the model is the tiny random one with the real Qwen3
chat template, so tool calls come from constrained decoding (`any` / a named tool).
(This SDK version has no `temperature` argument; it goes in `extra_body`, as the
Messages API still takes it.)
Prints one line per check; exits non-zero if any failed.
"""

import json

import anthropic
import jsonschema
from anthropic import Anthropic
from sdk_checks import BASE, KEY, MODEL, check, run


client = Anthropic(base_url=BASE, api_key=KEY, max_retries=0, timeout=120)
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 12},
                   "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [{"name": "get_weather", "description": "The weather", "input_schema": SCHEMA}]


@check
def a_message_with_a_system_prompt_and_usage():
    r = client.messages.create(model=MODEL, max_tokens=12, system="Be brief.", messages=MESSAGES,
                               extra_body={"temperature": 0})
    assert r.type == "message" and r.role == "assistant" and r.id.startswith("msg_"), r
    assert r.content and r.content[0].type == "text", r.content
    assert r.stop_reason in ("end_turn", "max_tokens"), r.stop_reason
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 12, r.usage


@check
def streaming_equals_the_json_answer():
    kw = dict(model=MODEL, max_tokens=16, messages=MESSAGES, extra_body={"temperature": 0})
    full = client.messages.create(**kw)
    with client.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == full.content[0].text, (text, full.content)
    assert final.stop_reason == full.stop_reason and final.usage.output_tokens == full.usage.output_tokens


@check
def a_stop_sequence_is_reported_as_such_json_and_streamed():
    kw = dict(model=MODEL, max_tokens=24, messages=MESSAGES, extra_body={"temperature": 0, "ignore_eos": True})
    text = client.messages.create(**kw).content[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert len(stop) == 3, text
    r = client.messages.create(stop_sequences=[stop, "\u2603 never"], **kw)
    assert (r.stop_reason, r.stop_sequence) == ("stop_sequence", stop), (r.stop_reason, r.stop_sequence)
    assert r.content[0].text == text[:text.index(stop)], (r.content, text, stop)
    with client.messages.stream(stop_sequences=[stop], **kw) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop), final


@check
def forced_tool_use_always_validates_json_and_streamed():
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
        for seed_temp in (0, 1.0):
            r = client.messages.create(model=MODEL, max_tokens=800, messages=MESSAGES, tools=TOOLS,
                                       tool_choice=choice, extra_body={"temperature": seed_temp})
            assert r.stop_reason == "tool_use", r
            uses = [b for b in r.content if b.type == "tool_use"]
            assert uses and all(u.name == "get_weather" for u in uses), r.content
            for u in uses:
                jsonschema.validate(u.input, SCHEMA)
        with client.messages.stream(model=MODEL, max_tokens=800, messages=MESSAGES, tools=TOOLS,
                                    tool_choice=choice, extra_body={"temperature": 0}) as stream:
            final = stream.get_final_message()
        uses = [b for b in final.content if b.type == "tool_use"]
        assert final.stop_reason == "tool_use" and uses, final
        for u in uses:
            jsonschema.validate(u.input, SCHEMA)


@check
def a_history_with_tool_use_and_tool_result_is_accepted():
    history = MESSAGES + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris", "unit": "celsius"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"}]},
    ]
    r = client.messages.create(model=MODEL, max_tokens=5, messages=history, tools=TOOLS,
                               tool_choice={"type": "none"}, stop_sequences=["\n\n"],
                               extra_body={"temperature": 0})
    assert r.type == "message" and r.usage.input_tokens > 30, r.usage


@check
def errors_take_anthropics_shape():
    try:
        client.messages.create(model="no-such-model", max_tokens=5, messages=MESSAGES)
    except anthropic.NotFoundError as e:
        assert e.body["type"] == "error" and e.body["error"]["type"] == "not_found_error", e.body
    else:
        raise AssertionError("unknown model accepted")
    try:
        client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "system", "content": "x"}])
    except anthropic.BadRequestError as e:
        assert e.body["error"]["type"] == "invalid_request_error" and "role" in e.body["error"]["message"], e.body
    else:
        raise AssertionError("bad role accepted")
    bad = Anthropic(base_url=BASE, api_key="wrong", max_retries=0)
    try:
        bad.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    except anthropic.AuthenticationError as e:
        assert e.body["error"]["type"] == "authentication_error", e.body
    else:
        raise AssertionError("wrong key accepted")


run(f"anthropic {anthropic.__version__}")
