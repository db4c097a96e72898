#!/usr/bin/env python3
"""Generate tiny golden model fixtures for novastack's CPU backend tests.

Run by hand (never in CI), from the repository root:

    python3 -m venv /work/.venvs/fx
    /work/.venvs/fx/bin/pip install -r scripts/requirements-fixtures.txt
    HF_HUB_OFFLINE=1 /work/.venvs/fx/bin/python scripts/make_fixtures.py --out tests/fixtures/models

Everything is built locally from configs (no hub access): one small byte-level
BPE tokenizer trained on /usr/share/common-licenses/* and tiny random decoder
models: nine dense (Llama, Qwen2, Qwen3, Mistral) and four mixture-of-experts
(Qwen3-MoE, Mixtral, MiniMax-M2).  For every model the reference outputs are
computed with Hugging Face transformers in float32 (weights rounded to the
storage dtype, i.e. the saved checkpoint loaded with dtype=float32), eager
attention and eager experts, one full forward per step (no KV cache).

A MoE seed is rejected when a router nearly ties (the gap between the k-th and
the (k+1)-th selection score is under ROUTER_GAP at some position of some
forward pass: a reference that flips on rounding is meaningless), or when the
greedy tokens computed in float64 differ from the float32 ones.

See tests/fixtures/models/README.md for the file formats.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    DeepseekV3Config,
    GenerationConfig,
    LlamaConfig,
    MiniMaxM2Config,
    MistralConfig,
    MixtralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

LICENSE_DIR = "/usr/share/common-licenses"
VOCAB_SIZE = 304  # total, including the 3 special tokens (which get the last ids)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GREEDY_STEPS = 32
MARGIN_THRESHOLD = 1e-3  # stricter than the 1e-4 the tests need
MAX_SEED_TRIES = 50
ROUTER_GAP = 2e-5  # smallest accepted gap between the k-th and (k+1)-th router score
LONG_MIN_TOKENS = 400

SHORT_PROMPT = "the License shall"
MEDIUM_PROMPT = "Grant of License: Zoë's café, naïve?\n\t  done."
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a tiny model."},
    {"role": "user", "content": "What is the License?"},
    {"role": "assistant", "content": "The terms and conditions."},
    {"role": "user", "content": "Thanks!"},
]

# ChatML.  The bos variant prepends the bos token, as Llama-style templates do
# (their tokenizers also add BOS on plain encode; apply_chat_template encodes
# with add_special_tokens=False so BOS is not doubled).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)
CHATML_TEMPLATE_BOS = "{{- bos_token }}" + CHATML_TEMPLATE


# --------------------------------------------------------------------------
# Fixture table
# --------------------------------------------------------------------------
# layout "hub": rope_theta / rope_scaling / torch_dtype (as most hub checkpoints)
# layout "t5":  rope_parameters / dtype (as transformers 5 writes them)
# tok "bos":   bos_token <|endoftext|>, add_bos_token true (BOS prepended on encode)
# tok "nobos": bos_token null, add_bos_token false (Qwen style)
# template "config": chat_template inside tokenizer_config.json
# template "jinja":  chat_template.jinja file (transformers-5 default)

FIXTURES = [
    dict(
        name="llama-f32",
        config_cls=LlamaConfig,
        storage="float32",
        layout="hub",
        tok="bos",
        template="config",
        gen_eos="int",
        seed=1001,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=1024, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
        ),
        features="untied; GQA 4 q heads / 2 kv heads; default rope theta 1e4; rms_norm_eps 1e-5",
    ),
    dict(
        name="llama-bf16-tied",
        config_cls=LlamaConfig,
        storage="bfloat16",
        layout="t5",
        tok="bos",
        template="jinja",
        gen_eos="int",
        seed=1002,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=160, max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
            tie_word_embeddings=True,
        ),
        features="tie_word_embeddings (no lm_head.weight in file); MHA 4/4; rope theta 5e4",
    ),
    dict(
        name="llama3-rope-f16",
        config_cls=LlamaConfig,
        storage="float16",
        layout="hub",
        tok="bos",
        template="config",
        gen_eos="list",
        seed=1003,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=128, max_position_embeddings=1024, rms_norm_eps=1e-5,
            rope_parameters={
                "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            tie_word_embeddings=False,
        ),
        features=("llama3 rope scaling (factor 8, low 1, high 4, original_max_position_embeddings 64, "
                  "theta 5e5); explicit head_dim 32 != hidden/heads 16; GQA 4/2"),
    ),
    dict(
        name="llama-mqa-sharded",
        config_cls=LlamaConfig,
        storage="float32",
        layout="t5",
        tok="bos",
        template="jinja",
        gen_eos="int",
        seed=1004,
        shard="150KB",
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
            intermediate_size=128, max_position_embeddings=2048, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
        ),
        features="MQA (1 kv head); sharded safetensors + model.safetensors.index.json",
    ),
    dict(
        name="qwen2-bf16",
        config_cls=Qwen2Config,
        storage="bfloat16",
        layout="hub",
        tok="nobos",
        template="config",
        gen_eos="list",
        seed=1005,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=False,
        ),
        # hub Qwen2 configs carry sliding_window even though use_sliding_window is false;
        # here it is deliberately small (32): transformers ignores it.
        hub_extra={"sliding_window": 32, "use_sliding_window": False, "max_window_layers": 1},
        features="q/k/v biases; untied; rope theta 1e6; sliding_window trap (see below)",
    ),
    dict(
        name="qwen2-f32-tied",
        config_cls=Qwen2Config,
        storage="float32",
        layout="t5",
        tok="nobos",
        template="jinja",
        gen_eos="int",
        seed=1006,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=True,
        ),
        features="q/k/v biases; tied embeddings (no lm_head.weight in file)",
    ),
    dict(
        name="qwen3-f32",
        config_cls=Qwen3Config,
        storage="float32",
        layout="t5",
        tok="nobos",
        template="config",
        gen_eos="int",
        seed=1007,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=128, max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=False,
        ),
        features="per-head q_norm/k_norm (RMSNorm over head_dim before rope); head_dim 32 != 16; untied",
    ),
    dict(
        name="qwen3-yarn-f32",
        config_cls=Qwen3Config,
        storage="float32",
        layout="hub",
        tok="nobos",
        template="config",
        gen_eos="int",
        seed=1030,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=128, max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 128},
            tie_word_embeddings=False,
        ),
        features="YaRN rope (factor 4 over an original context of 128, ramp inside the head, "
                 "cos/sin scaled by 0.1 ln 4 + 1) in the hub's rope_scaling layout; prompts past 128",
    ),
    dict(
        name="qwen3-bf16-tied",
        config_cls=Qwen3Config,
        storage="bfloat16",
        layout="hub",
        tok="nobos",
        template="jinja",
        gen_eos="list",
        seed=1008,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=128, max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=True,
        ),
        hub_extra={"sliding_window": None, "use_sliding_window": False, "max_window_layers": 2},
        features="q_norm/k_norm; head_dim 32; tied embeddings",
    ),
    dict(
        name="mistral-f16",
        config_cls=MistralConfig,
        storage="float16",
        layout="hub",
        tok="bos",
        template="config",
        gen_eos="int",
        seed=1009,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=1024, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            sliding_window=32, tie_word_embeddings=False,
        ),
        features="sliding_window 32 (long prompts exercise it); GQA 4/2",
    ),
    dict(
        name="qwen3-moe-bf16",
        config_cls=Qwen3MoeConfig,
        storage="bfloat16",
        layout="hub",
        tok="nobos",
        template="config",
        gen_eos="list",
        seed=1010,
        config=dict(
            hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=96, moe_intermediate_size=32, num_experts=8,
            num_experts_per_tok=4, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1],
            max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=False,
        ),
        hub_extra={"sliding_window": None, "use_sliding_window": False, "max_window_layers": 3},
        features=("Qwen3-MoE: 8 experts, top-4, norm_topk_prob true; layer 1 dense (mlp_only_layers [1], "
                  "intermediate 96) between MoE layers 0 and 2 (moe_intermediate_size 32); per-head q/k norm; "
                  "config spells num_experts (released layout)"),
    ),
    dict(
        name="qwen3-moe-f32-top1",
        config_cls=Qwen3MoeConfig,
        storage="float32",
        layout="t5",
        tok="nobos",
        template="jinja",
        gen_eos="int",
        seed=1011,
        config=dict(
            hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, intermediate_size=128, moe_intermediate_size=48, num_experts=6,
            num_experts_per_tok=1, norm_topk_prob=False, decoder_sparse_step=2,
            max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=True,
        ),
        features=("Qwen3-MoE: 6 experts, top-1 without renormalization (weight = softmax prob); "
                  "decoder_sparse_step 2 (layers 1 and 3 MoE, 0 and 2 dense); tied embeddings; "
                  "config spells num_local_experts (transformers 5 layout)"),
    ),
    dict(
        name="qwen3-moe-f16",
        config_cls=Qwen3MoeConfig,
        storage="float16",
        layout="t5",
        tok="nobos",
        template="config",
        gen_eos="int",
        seed=1014,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=96, moe_intermediate_size=40, num_experts=16,
            num_experts_per_tok=2, norm_topk_prob=True,
            max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=False,
        ),
        features=("Qwen3-MoE: 16 experts, top-2 renormalized, every layer MoE (the layout llama.cpp's "
                  "qwen3moe GGUF conversion accepts: tests/fixtures/gguf/moe is converted from it)"),
    ),
    dict(
        name="mixtral-f16",
        config_cls=MixtralConfig,
        storage="float16",
        layout="hub",
        tok="bos",
        template="config",
        gen_eos="int",
        seed=1012,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, num_local_experts=8, num_experts_per_tok=2,
            max_position_embeddings=1024, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            sliding_window=None, tie_word_embeddings=False,
        ),
        features=("Mixtral: 8 experts, top-2 renormalized; block_sparse_moe.experts.N.w1/w2/w3; no sliding "
                  "window (as the released Mixtral configs, and as llama.cpp runs its GGUF: "
                  "tests/fixtures/gguf/moe is converted from it)"),
    ),
    dict(
        name="minimax-m2-bf16",
        config_cls=MiniMaxM2Config,
        storage="bfloat16",
        layout="hub",
        tok="nobos",
        template="jinja",
        gen_eos="list",
        seed=1013,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=48, num_local_experts=8, num_experts_per_tok=3,
            max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "partial_rotary_factor": 0.5},
            tie_word_embeddings=False,
        ),
        features=("MiniMax-M2: 8 experts, top-3 by sigmoid score + e_score_correction_bias (random), weighed by the sigmoid scores renormalized; q/k RMSNorm over the whole "
                  "q (128) and k (64) rows; partial rotary: rotary_dim 16 of head_dim 32 (released layout)"),
    ),
    dict(
        name="deepseek-v3-f32",
        config_cls=DeepseekV3Config,
        storage="float32",
        layout="hub",
        tok="nobos",
        template="jinja",
        gen_eos="list",
        seed=1040,
        mtp_layer=True,
        config=dict(
            hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
            q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24,
            intermediate_size=96, moe_intermediate_size=24, n_routed_experts=8, num_experts_per_tok=3,
            n_group=4, topk_group=2, n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True,
            first_k_dense_replace=1, rope_interleave=True, max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 256, "beta_fast": 32, "beta_slow": 1,
                             "mscale": 0.707, "mscale_all_dim": 1.0},
            tie_word_embeddings=False,
        ),
        features=("DeepSeek-V3: multi-head latent attention with q LoRA (q_lora_rank 48), latent 32 + rope 8, "
                  "nope 16, v_head_dim 24, interleaved rope; YaRN (factor 4 over 256, mscale 0.707, "
                  "mscale_all_dim 1: cos/sin and the softmax scale corrected) in the hub's rope_scaling layout; "
                  "a multi-token-prediction layer stored as layer 3 (as released checkpoints carry it, not read); "
                  "layer 0 dense (first_k_dense_replace 1), layers 1-2 MoE: 8 experts in 4 groups, best 2 groups, "
                  "top-3 by sigmoid + e_score_correction_bias (random), renormalized, x2.5, one shared expert"),
    ),
    dict(
        name="deepseek-v3-bf16",
        config_cls=DeepseekV3Config,
        storage="bfloat16",
        layout="t5",
        tok="bos",
        template="config",
        gen_eos="int",
        seed=1041,
        config=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=3,
            q_lora_rank=None, kv_lora_rank=48, qk_nope_head_dim=24, qk_rope_head_dim=16, v_head_dim=16,
            intermediate_size=80, moe_intermediate_size=32, n_routed_experts=6, num_experts_per_tok=2,
            n_group=1, topk_group=1, n_shared_experts=2, routed_scaling_factor=1.0, norm_topk_prob=False,
            first_k_dense_replace=0, rope_interleave=False, max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
        ),
        features=("DeepSeek-V3 without q LoRA (plain q_proj, DeepSeek-V2-Lite style), latent 48 + rope 16, "
                  "nope 24, v_head_dim 16, rope not interleaved, 3 heads; every layer MoE: 6 experts, one group, "
                  "top-2 by sigmoid + bias without renormalization, two shared experts (width 64); "
                  "transformers-5 config layout"),
    ),
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def license_files() -> list[str]:
    return sorted(glob.glob(os.path.join(LICENSE_DIR, "*")))


def license_corpus() -> str:
    parts = []
    for path in license_files():
        with open(path, encoding="utf-8") as f:
            parts.append(f.read())
    return "".join(parts)


def train_base_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator([license_corpus()], trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE - len(SPECIAL_TOKENS), tok.get_vocab_size()
    # Special tokens go at the END of the vocab (as in Qwen / Llama-3), not at 0.
    tok.add_special_tokens(SPECIAL_TOKENS)
    assert tok.get_vocab_size() == VOCAB_SIZE
    return tok


def save_tokenizer(base: Tokenizer, fx: dict, out_dir: str) -> None:
    bos = fx["tok"] == "bos"
    hf = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(base.to_str()),
        bos_token="<|endoftext|>" if bos else None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE_BOS if bos else CHATML_TEMPLATE,
        # Passing add_bos_token makes transformers replace the post-processor with a
        # TemplateProcessing; only do it where BOS is wanted (Qwen keeps ByteLevel).
        **({"add_bos_token": True} if bos else {}),
    )
    hf.save_pretrained(out_dir, save_jinja_files=(fx["template"] == "jinja"))
    # transformers 5 does not write add_bos_token into tokenizer_config.json (it is
    # baked into the TemplateProcessing post-processor of tokenizer.json); write it
    # explicitly so a loader can read it from either place.  Semantics unchanged.
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["add_bos_token"] = bos
    cfg["add_eos_token"] = False
    write_json(cfg_path, cfg)
    has_jinja = os.path.exists(os.path.join(out_dir, "chat_template.jinja"))
    assert has_jinja == (fx["template"] == "jinja")
    assert ("chat_template" in cfg) == (fx["template"] == "config")


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def randomize_(model: torch.nn.Module, seed: int, tied: bool) -> None:
    """Overwrite EVERY parameter with seeded random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # named_parameters() de-duplicates tied tensors (lm_head.weight is embed_tokens.weight).
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith(".bias"):
                v = 0.1 * r
            elif p.dim() == 1:  # RMSNorm weights (input/post_attention/final norm, q_norm, k_norm)
                v = 1.0 + 0.1 * r
            elif "embed_tokens" in name:
                # tied: embedding is also the lm_head, so make it large enough for a logit spread
                v = (0.05 if tied else 0.02) * r
            elif name.startswith("lm_head"):
                v = 0.1 * r
            else:
                v = 0.08 * r
            p.copy_(v.to(p.dtype))
        # MiniMax-M2's selection bias is a buffer, not a parameter: large enough to change
        # which experts are picked (sigmoid scores differ by ~0.1).
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_((0.1 * torch.randn(b.shape, generator=g, dtype=torch.float32)).to(b.dtype))


def to_hub_layout(cfg: dict, fx: dict) -> dict:
    """Rewrite a transformers-5 config.json into the layout of typical hub checkpoints
    (rope_theta / rope_scaling / torch_dtype, no layer_types), same semantics."""
    out = {}
    for k, v in cfg.items():
        if k == "dtype":
            out["torch_dtype"] = v
        elif k == "rope_parameters":
            rp = dict(v)
            out["rope_theta"] = rp.pop("rope_theta")
            if "partial_rotary_factor" in rp:
                # released MiniMax-M2 configs give the rotated width as rotary_dim
                out["rotary_dim"] = int(cfg["head_dim"] * rp.pop("partial_rotary_factor"))
            if rp.get("rope_type", "default") == "default":
                out["rope_scaling"] = None
            else:
                # hub llama3 configs spell rope_type (newer) and sometimes also type
                out["rope_scaling"] = {k2: rp[k2] for k2 in sorted(rp)}
        elif k == "layer_types":
            continue  # older hub configs do not have it
        elif k == "num_local_experts" and cfg["model_type"] == "qwen3_moe":
            out["num_experts"] = v  # released Qwen3-MoE configs spell it this way
        elif k == "head_dim" and v == cfg["hidden_size"] // cfg["num_attention_heads"] and cfg["model_type"] not in ("qwen3", "qwen3_moe"):
            continue  # older hub configs omit head_dim when it is the default
        else:
            out[k] = v
    out.update(fx.get("hub_extra", {}))
    return dict(sorted(out.items()))


def build_and_save_model(fx: dict, seed: int, out_dir: str, tok_ids: dict) -> dict:
    """Build random model, save it in storage dtype. Returns the expected fp32 state dict
    (storage-rounded) for verification."""
    kw = dict(fx["config"])
    kw.update(
        vocab_size=VOCAB_SIZE,
        hidden_act="silu",
        bos_token_id=tok_ids["<|endoftext|>"],
        eos_token_id=tok_ids["<|im_end|>"],
        pad_token_id=tok_ids["<|endoftext|>"],
    )
    config = fx["config_cls"](**kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tied = bool(kw.get("tie_word_embeddings"))
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    randomize_(model, seed, tied)
    model = model.to(DTYPES[fx["storage"]])
    expected = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    save_kw = {}
    if fx.get("shard"):
        save_kw["max_shard_size"] = fx["shard"]
    model.save_pretrained(out_dir, **save_kw)
    if fx.get("mtp_layer"):
        add_mtp_layer(out_dir, kw["num_hidden_layers"], seed)

    gen_eos = [tok_ids["<|im_end|>"], tok_ids["<|endoftext|>"]] if fx["gen_eos"] == "list" else tok_ids["<|im_end|>"]
    gen = GenerationConfig(
        bos_token_id=tok_ids["<|endoftext|>"] if fx["tok"] == "bos" else None,
        eos_token_id=gen_eos,
        pad_token_id=tok_ids["<|endoftext|>"],
    )
    gen.save_pretrained(out_dir)
    return expected


def add_mtp_layer(out_dir: str, layers: int, seed: int) -> None:
    """Append a multi-token-prediction layer the way released DeepSeek-V3 checkpoints store
    it: as layer `num_hidden_layers` (a decoder layer plus enorm / hnorm / eh_proj /
    shared_head.norm), which transformers and novastack must not read."""
    path = os.path.join(out_dir, "model.safetensors")
    g = torch.Generator().manual_seed(seed + 7)
    with safetensors.safe_open(path, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    last = f"model.layers.{layers - 1}."
    for k, v in list(tensors.items()):
        if k.startswith(last):
            new = f"model.layers.{layers}." + k[len(last):]
            tensors[new] = torch.randn(v.shape, generator=g).to(v.dtype)
    h = tensors["model.norm.weight"].shape[0]
    dt = tensors["model.norm.weight"].dtype
    for name, shape in [("enorm.weight", (h,)), ("hnorm.weight", (h,)), ("eh_proj.weight", (h, 2 * h)),
                        ("shared_head.norm.weight", (h,))]:
        tensors[f"model.layers.{layers}.{name}"] = torch.randn(shape, generator=g).to(dt)
    save_file(tensors, path, metadata=meta)


def is_moe(fx: dict) -> bool:
    return fx["config_cls"] in (Qwen3MoeConfig, MixtralConfig, MiniMaxM2Config, DeepseekV3Config)


def load_reference(out_dir: str, dtype=torch.float32) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=dtype, attn_implementation="eager")
    if hasattr(model, "set_experts_implementation"):
        # the plain per-expert loop (also the only one that computes in float64)
        model.set_experts_implementation("eager")
    model.eval()
    return model


class RouterGaps:
    """Forward hooks on every MoE router: the smallest gap, over every token of every
    forward pass, between the k-th and the (k+1)-th selection score."""

    def __init__(self, model):
        self.min_gap = float("inf")
        self.handles = []
        for m in model.modules():
            if type(m).__name__.lower().endswith("topkrouter"):
                self.handles.append(m.register_forward_hook(self.hook))

    def hook(self, module, inputs, output):
        logits = output[0].double()
        k = module.top_k
        if k >= logits.shape[-1]:
            return
        if type(module).__name__.startswith("DeepseekV3"):
            # Selection score sigmoid + bias; with groups, the gap between the last kept
            # group and the next counts too, then the top-k gap among the kept experts.
            score = torch.sigmoid(logits) + module.e_score_correction_bias.double()
            g = module.num_group
            if g and g > 1:
                per = score.view(-1, g, score.shape[-1] // g)
                gs = per.topk(2, dim=-1)[0].sum(-1)
                top = torch.topk(gs, g, dim=-1).values
                t = module.topk_group
                if t < g:
                    self.min_gap = min(self.min_gap, float((top[:, t - 1] - top[:, t]).min()))
                keep = torch.zeros_like(gs).scatter_(1, torch.topk(gs, t, dim=-1)[1], 1.0)
                mask = keep.unsqueeze(-1).expand_as(per).reshape(score.shape).bool()
                score = score.masked_fill(~mask, float("-inf"))
            top = torch.topk(score, k + 1, dim=-1).values
            gaps = top[:, k - 1] - top[:, k]
            gaps = gaps[torch.isfinite(gaps)]
            if gaps.numel():
                self.min_gap = min(self.min_gap, float(gaps.min()))
            return
        if type(module).__name__.startswith("MiniMax"):
            score = torch.sigmoid(logits) + inputs[1].double()
        else:
            score = torch.softmax(logits, dim=-1)
        top = torch.topk(score, k + 1, dim=-1).values
        self.min_gap = min(self.min_gap, float((top[:, k - 1] - top[:, k]).min()))

    def remove(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def forward_logits(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=x, use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def greedy(model, ids: list[int], steps: int) -> tuple[list[int], float]:
    """Plain greedy loop: full forward each step, argmax of the last position, EOS ignored."""
    seq = list(ids)
    new = []
    min_margin = float("inf")
    for _ in range(steps):
        last = forward_logits(model, seq)[-1]
        top2 = torch.topk(last, 2)
        min_margin = min(min_margin, float(top2.values[0] - top2.values[1]))
        nxt = int(torch.argmax(last))
        assert nxt == int(top2.indices[0])
        new.append(nxt)
        seq.append(nxt)
    return new, min_margin


# --------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------


def long_prompt_text(tokenizer) -> str:
    """Leading words of the Apache-2.0 license text (original whitespace kept) until the
    prompt has >= LONG_MIN_TOKENS tokens."""
    with open(os.path.join(LICENSE_DIR, "Apache-2.0"), encoding="utf-8") as f:
        chunks = re.findall(r"\s*\S+", f.read())
    text = ""
    for chunk in chunks:
        text += chunk
        if len(tokenizer(text)["input_ids"]) >= LONG_MIN_TOKENS:
            return text
    raise RuntimeError("license text too short")


def ids_only_prompt() -> list[int]:
    rs = np.random.RandomState(4242)
    body = [int(x) for x in rs.randint(0, VOCAB_SIZE, size=12)]
    im_start, im_end = VOCAB_SIZE - 2, VOCAB_SIZE - 1
    return [im_start] + body + [im_end, VOCAB_SIZE - 3]


def make_cases(tokenizer) -> list[dict]:
    cases = []
    for name, text in [
        ("short", SHORT_PROMPT),
        ("medium", MEDIUM_PROMPT),
        ("long", long_prompt_text(tokenizer)),
    ]:
        ids = tokenizer(text)["input_ids"]  # add_special_tokens=True: adds BOS only if add_bos
        cases.append({"name": name, "prompt": text, "prompt_token_ids": ids})
    cases.append({"name": "ids_only", "prompt": None, "prompt_token_ids": ids_only_prompt()})
    return cases


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


def check_sliding_window_mask(model, ids: list[int], window: int) -> str:
    """Read the attention probabilities transformers actually used (eager, output_attentions)
    and derive which (query i, key j) pairs were visible."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=False, output_attentions=True)
    n = len(ids)
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    expected = (j <= i) & (i - j < window)
    for layer, att in enumerate(out.attentions):
        visible = (att[0] > 0).all(dim=0)  # [q, k], same for every head
        masked = (att[0] == 0).all(dim=0)
        assert torch.equal(visible | masked, torch.ones_like(visible)), "ambiguous probabilities"
        if not torch.equal(visible, expected):
            raise AssertionError(f"layer {layer}: sliding window mask differs from i-j<W")
    return (
        f"eager attention probabilities show query i attends key j iff 0 <= i - j < {window} "
        f"(i.e. j <= i and j > i - {window}: {window} keys including itself), verified on the "
        f"{n}-token prompt for every layer/head"
    )


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def safetensors_keys(out_dir: str) -> list[str]:
    keys = []
    for path in sorted(glob.glob(os.path.join(out_dir, "*.safetensors"))):
        if os.path.basename(path).startswith("golden"):
            continue
        with safetensors.safe_open(path, "pt") as f:
            keys.extend(f.keys())
    return sorted(keys)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def versions() -> dict:
    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def make_fixture(fx: dict, base_tok: Tokenizer, out_root: str) -> dict:
    name = fx["name"]
    out_dir = os.path.join(out_root, name)
    tok_ids = {t: base_tok.token_to_id(t) for t in SPECIAL_TOKENS}
    notes = [fx["features"] + "."]

    for attempt in range(MAX_SEED_TRIES):
        seed = fx["seed"] + 100 * attempt
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.makedirs(out_dir)
        save_tokenizer(base_tok, fx, out_dir)
        expected = build_and_save_model(fx, seed, out_dir, tok_ids)

        cfg_path = os.path.join(out_dir, "config.json")
        with open(cfg_path) as f:
            t5_cfg = json.load(f)
        layout_check = None
        if fx["layout"] == "hub":
            # Reference before the rewrite, to prove the hub layout has the same semantics.
            before = load_reference(out_dir)
            probe = list(range(0, VOCAB_SIZE, 3))[:100]
            probe_logits = forward_logits(before, probe)
            del before
            write_json(cfg_path, to_hub_layout(t5_cfg, fx))
            layout_check = (probe, probe_logits)

        model = load_reference(out_dir)
        # 1. weights loaded == storage-rounded weights we generated
        sd = model.state_dict()
        assert set(sd) == set(expected), (set(sd) ^ set(expected))
        for k, v in expected.items():
            assert torch.equal(sd[k], v), f"{name}: weight mismatch {k}"
            assert sd[k].dtype == torch.float32
        # 2. config layout rewrite preserved semantics bit-for-bit
        if layout_check is not None:
            probe, probe_logits = layout_check
            assert torch.equal(forward_logits(model, probe), probe_logits), f"{name}: hub layout changed semantics"

        tokenizer = AutoTokenizer.from_pretrained(out_dir)
        cases = make_cases(tokenizer)
        ok = True
        gaps = RouterGaps(model) if is_moe(fx) else None
        logits_tensors = {}
        for case in cases:
            ids = case["prompt_token_ids"]
            logits = forward_logits(model, ids)
            assert logits.shape == (len(ids), VOCAB_SIZE)
            gen, margin = greedy(model, ids, GREEDY_STEPS)
            assert gen[0] == int(torch.argmax(logits[-1]))
            tname = f"{case['name']}.logits"
            logits_tensors[tname] = logits.contiguous()
            case.update(
                greedy_token_ids=gen,
                logits_tensor=tname,
                min_top2_margin=margin,
                num_prompt_tokens=len(ids),
            )
            if margin < MARGIN_THRESHOLD:
                ok = False
        why = f"a margin < {MARGIN_THRESHOLD}"
        if gaps is not None:
            gaps.remove()
            router_gap = gaps.min_gap
            if router_gap < ROUTER_GAP:
                ok, why = False, f"a router gap {router_gap:.3g} < {ROUTER_GAP}"
            elif ok:
                m64 = load_reference(out_dir, torch.float64)
                for case in cases:
                    g64, _ = greedy(m64, case["prompt_token_ids"], GREEDY_STEPS)
                    if g64 != case["greedy_token_ids"]:
                        ok, why = False, f"float64 greedy tokens differ on case {case['name']}"
                        break
                del m64
        if ok:
            break
        print(f"  {name}: seed {seed} gave {why}, retrying", flush=True)
    else:
        raise RuntimeError(f"{name}: no seed with margins >= {MARGIN_THRESHOLD}")
    if attempt:
        rejected = ", ".join(str(fx["seed"] + 100 * a) for a in range(attempt))
        notes.append(f"Weight seed(s) {rejected} rejected: some greedy top-2 margin < {MARGIN_THRESHOLD}"
                     + (f", router gap < {ROUTER_GAP} or float64 greedy tokens differing." if is_moe(fx) else "."))
    if is_moe(fx):
        notes.append(f"Smallest router gap (k-th minus (k+1)-th selection score, every token of every forward "
                     f"pass) {router_gap:.3g}; float64 greedy tokens (eager experts) equal the float32 ones.")

    # Sanity checks on the saved files.
    keys = safetensors_keys(out_dir)
    tied = bool(fx["config"].get("tie_word_embeddings"))
    assert ("lm_head.weight" in keys) == (not tied), f"{name}: lm_head presence"
    if fx.get("shard"):
        shards = sorted(glob.glob(os.path.join(out_dir, "model-*-of-*.safetensors")))
        assert len(shards) >= 2 and os.path.exists(os.path.join(out_dir, "model.safetensors.index.json"))
        notes.append(f"Weights sharded into {len(shards)} files (max_shard_size {fx['shard']}).")
    else:
        assert os.path.exists(os.path.join(out_dir, "model.safetensors"))

    # Cross-check: transformers' own greedy generate (KV cache) with EOS disabled.
    with torch.no_grad():
        model.generation_config.eos_token_id = None
        agree = []
        for case in cases:
            x = torch.tensor([case["prompt_token_ids"]])
            g = model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=GREEDY_STEPS, do_sample=False,
                eos_token_id=None, pad_token_id=tok_ids["<|endoftext|>"],
            )
            agree.append(g[0, x.shape[1]:].tolist() == case["greedy_token_ids"])
    notes.append(
        "model.generate(do_sample=False, KV cache, EOS disabled) reproduces greedy_token_ids for "
        + ("all cases." if all(agree) else f"cases {[c['name'] for c, a in zip(cases, agree) if a]} only.")
    )

    if fx["config"].get("sliding_window"):
        long_ids = next(c for c in cases if c["name"] == "long")["prompt_token_ids"]
        notes.append("Sliding window: " + check_sliding_window_mask(model, long_ids, fx["config"]["sliding_window"]) + ".")
        # Without the window the same weights give different logits after position W-1
        # and identical ones before.
        cfg = model.config
        W = cfg.sliding_window
        ref = logits_tensors["long.logits"]
        cfg.sliding_window = None
        try:
            nowin = forward_logits(model, long_ids)
        finally:
            cfg.sliding_window = W
        same_prefix = torch.allclose(nowin[:W], ref[:W], atol=1e-5, rtol=0)
        diff_after = float((nowin[W:] - ref[W:]).abs().max())
        notes.append(
            f"Disabling the window leaves positions 0..{W - 1} unchanged ({same_prefix}) and changes later "
            f"positions by up to {diff_after:.3g} in logit, so ignoring sliding_window fails the long/medium cases."
        )
    rope = fx["config"].get("rope_parameters", {})
    if rope.get("rope_type", "default") != "default":
        # Show the scaling matters: same weights, plain rope with the same theta.
        plain_cfg = model.config.__class__.from_pretrained(out_dir)
        plain_cfg.rope_parameters = {"rope_type": "default", "rope_theta": rope["rope_theta"]}
        plain = AutoModelForCausalLM.from_pretrained(
            out_dir, config=plain_cfg, dtype=torch.float32, attn_implementation="eager").eval()
        long_ids = next(c for c in cases if c["name"] == "long")["prompt_token_ids"]
        d = (forward_logits(plain, long_ids) - logits_tensors["long.logits"]).abs().amax(dim=1)
        notes.append(
            f"Without the {rope['rope_type']} scaling (plain rope, same theta) the long-case logits differ by up to "
            f"{float(d.max()):.3g} (already {float(d[1]):.3g} at position 1), so the scaling must be implemented."
        )
        del plain
    if name == "qwen2-bf16":
        notes.append(
            "config.json says sliding_window 32 but use_sliding_window false: transformers sets "
            f"config.sliding_window={model.config.sliding_window!r} and layer_types={model.config.layer_types}, "
            "i.e. plain causal attention over all positions."
        )
    notes.append(f"Weights seed {seed}; reference = saved checkpoint loaded with dtype=float32, eager attention, "
                 "one full forward (use_cache=False) per greedy step.")

    save_file(logits_tensors, os.path.join(out_dir, "golden_logits.safetensors"), metadata={"format": "pt"})

    with open(os.path.join(out_dir, "config.json")) as f:
        final_cfg = json.load(f)
    tcfg = json.load(open(os.path.join(out_dir, "tokenizer_config.json")))
    gcfg = json.load(open(os.path.join(out_dir, "generation_config.json")))
    golden = {
        "model": name,
        "architecture": final_cfg["architectures"][0],
        "model_type": final_cfg["model_type"],
        "storage_dtype": fx["storage"],
        "tie_word_embeddings": tied,
        "config_layout": "hub (rope_theta/rope_scaling/torch_dtype)" if fx["layout"] == "hub"
        else "transformers-5 (rope_parameters/dtype)",
        "chat_template_location": "chat_template.jinja" if fx["template"] == "jinja" else "tokenizer_config.json",
        "tokenizer_adds_bos": fx["tok"] == "bos",
        "bos_token": tcfg.get("bos_token"),
        "eos_token": tcfg.get("eos_token"),
        "generation_eos_token_id": gcfg.get("eos_token_id"),
        "vocab_size": VOCAB_SIZE,
        "seed": seed,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "versions": versions(),
        "reference": "float32 compute, weights rounded to storage dtype, attn_implementation=eager, "
                     "full forward per step, argmax, EOS ignored",
        "notes": " ".join(notes),
        "weight_tensors": keys,
        "chat_template_check": chat_check(tokenizer),
        "cases": [
            {
                k: c[k]
                for k in ["name", "prompt", "prompt_token_ids", "num_prompt_tokens", "greedy_token_ids",
                          "logits_tensor", "min_top2_margin"]
            }
            for c in cases
        ],
    }
    write_json(os.path.join(out_dir, "golden.json"), golden)
    for path in glob.glob(os.path.join(out_dir, "*")):
        os.chmod(path, 0o644)  # safetensors writes 0600
    return golden


def chat_check(tokenizer) -> dict:
    rendered = tokenizer.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.apply_chat_template(CHAT_MESSAGES, tokenize=True, add_generation_prompt=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    ids = [int(i) for i in ids]
    assert ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    no_gen = tokenizer.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=False)
    return {
        "messages": CHAT_MESSAGES,
        "add_generation_prompt": True,
        "rendered": rendered,
        "rendered_without_generation_prompt": no_gen,
        "token_ids": ids,
        "note": "token_ids = tokenizer(rendered, add_special_tokens=False); BOS comes from the template itself",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures/models")
    ap.add_argument("--only", nargs="*", help="fixture names to (re)build; default all")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.makedirs(args.out, exist_ok=True)

    base_tok = train_base_tokenizer()
    again = train_base_tokenizer()
    assert base_tok.to_str() == again.to_str(), "BPE training is not deterministic"
    corpus_sha = hashlib.sha256(license_corpus().encode("utf-8")).hexdigest()
    print(f"tokenizer: vocab {VOCAB_SIZE}, corpus sha256 {corpus_sha}", flush=True)

    summary = {}
    for fx in FIXTURES:
        if args.only and fx["name"] not in args.only:
            continue
        print(f"building {fx['name']} ...", flush=True)
        g = make_fixture(fx, base_tok, args.out)
        summary[fx["name"]] = {c["name"]: (c["num_prompt_tokens"], round(c["min_top2_margin"], 5)) for c in g["cases"]}
        print(f"  {summary[fx['name']]}", flush=True)

    if args.only:
        print("done (partial: MANIFEST.json not rewritten)", flush=True)
        return
    write_json(
        os.path.join(args.out, "MANIFEST.json"),
        {
            "generator": "scripts/make_fixtures.py",
            "versions": versions(),
            "tokenizer_training_corpus": {
                "files": [os.path.basename(p) for p in license_files()],
                "sha256_of_concatenation": corpus_sha,
            },
            "fixtures": [fx["name"] for fx in FIXTURES],
        },
    )
    print("done", flush=True)


if __name__ == "__main__":
    main()
