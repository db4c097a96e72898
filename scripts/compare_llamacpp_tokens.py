#!/usr/bin/env python3
"""Greedy tokens of novastack and llama.cpp's llama-server on the same GGUF.

For each GGUF given, starts both servers on 127.0.0.1 (one at a time beside each other),
tokenizes each prompt once (llama-server's /tokenize of the ChatML-rendered prompt, so both
get the same ids), and decodes N tokens greedily on both with the top-2 log-probabilities
of every step. Prints, per prompt, whether the tokens are equal and, where they part, the
step and both programs' gap between their top two logits there (log p1 - log p2 is the
logit gap): a small gap on either side means rounding, not a bug, decided the token.

Usage: scripts/compare_llamacpp_tokens.py --novastack BIN --llama-server BIN \\
           [--tokens 32] [--cpu-weights native] NAME=FILE.gguf ...
Exit status 0; the summary is the last lines of output.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# (system, user): the first is what SmolLM2's chat template renders for a lone user turn.
PROMPTS = [
    (SMOL_SYSTEM, "What is the capital of France?"),
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three uses of a paperclip.",
    "Explain what a CPU cache is in two sentences.",
    "Translate 'good morning' into Spanish and German.",
    "What is 12 times 11?",
]


def post(url, body, timeout=300):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def wait_ready(url, proc, log):
    for _ in range(600):
        if proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    sys.exit(f"server did not become ready: {url}; see {log}")


def gap(tops):
    lps = sorted((t["logprob"] for t in tops), reverse=True)
    return lps[0] - lps[1] if len(lps) > 1 else float("inf")


def llama_run(port, ids, n):
    r = post(f"http://127.0.0.1:{port}/completion", {
        "prompt": ids, "n_predict": n, "temperature": 0.0, "n_probs": 2,
        "cache_prompt": False, "samplers": ["top_k"], "top_k": 1,
    })
    steps = r["completion_probabilities"]
    return [s["token"] for s in steps], [gap(s["top_logprobs"]) for s in steps]


def novastack_run(port, ids, n):
    r = post(f"http://127.0.0.1:{port}/v1/completions", {
        "model": "default", "prompt": ids, "max_tokens": n, "temperature": 0.0,
        "logprobs": 2,
    })
    lp = r["choices"][0]["logprobs"]
    gaps = []
    for top in lp["top_logprobs"]:
        v = sorted(top.values(), reverse=True)
        gaps.append(v[0] - v[1] if len(v) > 1 else float("inf"))
    return lp["tokens"], gaps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--novastack", required=True)
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--cpu-weights", default="native")
    ap.add_argument("--out", default="target/compare-tokens")
    ap.add_argument("models", nargs="+", help="NAME=FILE.gguf")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    threads = str(os.cpu_count() or 2)
    summary = []
    for spec in a.models:
        name, path = spec.split("=", 1)
        ll_log = open(f"{a.out}/llama-server-{name}.log", "w")
        ll = subprocess.Popen([a.llama_server, "-m", path, "--host", "127.0.0.1", "--port", "8493",
                               "-t", threads, "-np", "1", "-c", "2048", "--no-webui",
                               # An f32 KV cache, as novastack's CPU backend keeps it.
                               "-ctk", "f32", "-ctv", "f32"],
                              stdout=ll_log, stderr=subprocess.STDOUT)
        ns_log = open(f"{a.out}/novastack-{name}.log", "w")
        ns = subprocess.Popen([a.novastack, "serve", "--model", path, "--served-model-name", "default",
                               "--host", "127.0.0.1", "--port", "8494", "--cpu-weights", a.cpu_weights],
                              stdout=ns_log, stderr=subprocess.STDOUT)
        try:
            wait_ready("http://127.0.0.1:8493/health", ll, ll_log.name)
            wait_ready("http://127.0.0.1:8494/ready", ns, ns_log.name)
            same = 0
            for p in PROMPTS:
                system, p = p if isinstance(p, tuple) else (None, p)
                text = f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n"
                if system:
                    text = f"<|im_start|>system\n{system}<|im_end|>\n" + text
                    p = f"[system] {p}"
                ids = post("http://127.0.0.1:8493/tokenize",
                           {"content": text, "add_special": False, "parse_special": True})["tokens"]
                lt, lg = llama_run(8493, ids, a.tokens)
                nt, ng = novastack_run(8494, ids, a.tokens)
                # llama-server shows end-of-sequence tokens as ''.
                nt = ["" if t in ("<|im_end|>", "<|endoftext|>") else t for t in nt]
                if lt == nt:
                    same += 1
                    print(f"{name}: {p!r}: {len(nt)} tokens equal ({''.join(nt)[:60]!r}...)")
                    continue
                i = next((i for i, (x, y) in enumerate(zip(lt, nt)) if x != y), min(len(lt), len(nt)))
                print(f"{name}: {p!r}: equal for {i} tokens, then llama.cpp {lt[i:i+1]} vs novastack "
                      f"{nt[i:i+1]}; top-2 logit gap there: llama.cpp {lg[i]:.3f}, novastack {ng[i]:.3f}")
                print(f"    llama.cpp: {''.join(lt)!r}\n    novastack: {''.join(nt)!r}")
            summary.append(f"{name}: {same}/{len(PROMPTS)} prompts with equal greedy tokens ({a.tokens} each)")
        finally:
            for proc in (ll, ns):
                proc.terminate()
                proc.wait()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
