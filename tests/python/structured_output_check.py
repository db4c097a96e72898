"""Structured output through the official `openai` Python SDK against a running
novastack server whose model is a tiny random one: only constrained decoding can make
its output valid, so every answer that validates is the grammar's doing.

Run by tests/tests/openai_sdk.rs with NOVASTACK_BASE_URL, NOVASTACK_KEY and
NOVASTACK_MODEL. Needs `openai` (with its pydantic) and `jsonschema`.
Prints one line per check; exits non-zero if any failed.
"""

import json
import re
from typing import Literal, Optional

import jsonschema
import openai
from openai import OpenAI
from pydantic import BaseModel, Field
from sdk_checks import BASE, KEY, MODEL, check, run


client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=120)
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "height": {"type": "number", "minimum": 0.5, "maximum": 2.5},
        "role": {"enum": ["admin", "user", "guest"]},
        "active": {"type": "boolean"},
        "email": {"anyOf": [{"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"}, {"type": "null"}]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "height", "role", "active", "email", "tags", "address"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
SAMPLINGS = [dict(temperature=0)] + [dict(temperature=1.0, seed=s) for s in range(4)] + [dict(temperature=1.5, top_p=0.95, seed=9)]


def valid(text, schema=SCHEMA):
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


@check
def json_schema_answers_always_validate_greedy_and_sampled():
    for kw in SAMPLINGS:
        r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=400,
                                           response_format=FORMAT, **kw)
        c = r.choices[0]
        assert c.finish_reason == "stop", (kw, c.finish_reason, c.message.content)
        valid(c.message.content)
        # Compact by default: no whitespace outside strings.
        bare = re.sub(r'"(\\.|[^"\\])*"', '""', c.message.content)
        assert not re.search(r"\s", bare), c.message.content


@check
def json_schema_streamed_equals_the_json_answer():
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=400, response_format=FORMAT, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    text, finish = "", None
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == full and finish == "stop", (text, full, finish)
    valid(text)


@check
def parse_with_a_pydantic_model():
    class Address(BaseModel):
        city: str = Field(max_length=10)
        zip: str = Field(pattern=r"^[0-9]{5}$")

    class Person(BaseModel):
        name: str = Field(max_length=12)
        age: int = Field(ge=0, le=120)
        role: Literal["admin", "user", "guest"]
        nickname: Optional[str] = Field(max_length=8)
        address: Address

    for seed in range(3):
        r = client.chat.completions.parse(model=MODEL, messages=MESSAGES, max_tokens=300,
                                          response_format=Person, temperature=1.0, seed=seed)
        p = r.choices[0].message.parsed
        assert isinstance(p, Person) and 0 <= p.age <= 120, r.choices[0].message.content


@check
def json_object_and_the_vllm_guided_fields():
    # Any object is allowed, so a random model may still be inside one at max_tokens;
    # every finished answer must be an object, and at least one must finish.
    finished = 0
    for kw in SAMPLINGS:
        r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=300,
                                           response_format={"type": "json_object"}, **kw)
        c = r.choices[0]
        if c.finish_reason == "stop":
            finished += 1
            assert isinstance(json.loads(c.message.content), dict), c.message.content
        else:
            assert c.message.content.startswith("{"), c.message.content
    assert finished > 0, "no json_object answer finished"
    cases = [
        ({"guided_regex": r"[A-Z][a-z]{2,5}-[0-9]{2}"}, lambda t: re.fullmatch(r"[A-Z][a-z]{2,5}-[0-9]{2}", t)),
        ({"guided_choice": ["red", "green", "blue"]}, lambda t: t in ("red", "green", "blue")),
        ({"guided_json": SCHEMA}, lambda t: valid(t) is not None),
        ({"guided_grammar": 'root ::= "(" num ("+" num){0,3} ")"\nnum ::= [1-9][0-9]?'},
         lambda t: re.fullmatch(r"\([1-9][0-9]?(\+[1-9][0-9]?){0,3}\)", t)),
        ({"guided_grammar": 'start: "<" WORD ">"\nWORD: /[a-z]{1,4}/'}, lambda t: re.fullmatch(r"<[a-z]{1,4}>", t)),
    ]
    for extra, ok in cases:
        for kw in SAMPLINGS[:3]:
            r = client.completions.create(model=MODEL, prompt="Answer:", max_tokens=400, extra_body=extra, **kw)
            t = r.choices[0].text
            assert r.choices[0].finish_reason == "stop" and ok(t), (extra, kw, t)


@check
def n_sequences_each_follow_the_schema():
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=400, n=3,
                                       temperature=1.0, seed=5, response_format=FORMAT)
    assert len(r.choices) == 3
    for c in r.choices:
        valid(c.message.content)


@check
def unenforceable_or_malformed_constraints_are_400s_naming_the_field():
    cases = [
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "array", "unevaluatedItems": False}}}), "response_format", "unevaluatedItems"),
        (dict(response_format={"type": "yaml"}), "response_format", "yaml"),
        (dict(extra_body={"guided_regex": "(unclosed"}), "guided_regex", ""),
        (dict(extra_body={"guided_grammar": "root ::= missing"}), "guided_grammar", "missing"),
        (dict(response_format={"type": "json_object"}, extra_body={"guided_choice": ["a"]}), "guided_choice", "one output constraint"),
    ]
    for kw, param, word in cases:
        try:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, **kw)
        except openai.BadRequestError as e:
            assert e.body["param"] == param and word in e.body["message"], e.body
        else:
            raise AssertionError(f"no error for {kw}")


run("structured output")
