#!/usr/bin/env python3
"""The release soak: mixed traffic against a running novastack server for a bounded time.

Clients (threads) loop over a weighted mix of request kinds: plain and streaming chat,
completions with n > 1, bad inputs, clients that leave mid-stream, slow readers, bursts
past the queue limit, and /health. Every few seconds it samples the server's resident
memory (from /proc/PID/status) and its KV blocks in use. At the end it prints one table:
requests served, errors by class, latency percentiles, memory over time, and the checks
that must hold (no 5xx, no connection errors, every KV block back, memory flat).
Standard library only; targets 127.0.0.1 / ::1 only.
"""

import argparse
import http.client
import json
import random
import socket
import sys
import threading
import time
from collections import Counter

KINDS = [
    ("chat", 30),
    ("chat_stream", 25),
    ("completion_n", 10),
    ("bad_input", 10),
    ("disconnect", 10),
    ("slow_reader", 5),
    ("health", 10),
]


def weighted(rng):
    total = sum(w for _, w in KINDS)
    x = rng.uniform(0, total)
    for k, w in KINDS:
        x -= w
        if x <= 0:
            return k
    return KINDS[-1][0]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.outcomes = Counter()
        self.latency = {}

    def add(self, kind, outcome, seconds=None):
        with self.lock:
            self.outcomes[(kind, outcome)] += 1
            if seconds is not None and outcome.startswith("2"):
                self.latency.setdefault(kind, []).append(seconds)


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def one(host, port, model, kind, rng, stats, max_tokens):
    t = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        if kind == "health":
            conn.request("GET", "/health")
            r = conn.getresponse()
            r.read()
            stats.add(kind, str(r.status), time.monotonic() - t)
            return
        msgs = [{"role": "user", "content": "Tell me about %d things." % rng.randint(1, 99)}]
        if kind in ("chat", "chat_stream", "disconnect", "slow_reader"):
            path = "/v1/chat/completions"
            body = {"model": model, "messages": msgs, "max_tokens": rng.randint(1, max_tokens)}
            if kind != "chat":
                body["stream"] = True
        elif kind == "completion_n":
            path = "/v1/completions"
            body = {"model": model, "prompt": "Once upon a time", "max_tokens": rng.randint(1, max_tokens),
                    "n": rng.randint(2, 4), "seed": rng.randint(0, 1000)}
        else:
            path = "/v1/chat/completions"
            body = rng.choice([
                {"model": model, "messages": "x"},
                {"model": model, "messages": msgs, "temperature": 5},
                {"model": model, "messages": msgs, "max_tokens": -1},
                {"model": "nope", "messages": msgs},
                {"model": model, "messages": msgs, "logit_bias": {"x": 1}},
                {"model": model, "messages": msgs, "stop": ["s"] * 9},
            ])
        data = json.dumps(body).encode()
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        if kind == "disconnect" and r.status == 200:
            r.read(rng.randint(1, 400))
            conn.sock.shutdown(socket.SHUT_RDWR)
            stats.add(kind, "left", time.monotonic() - t)
            return
        if kind == "slow_reader" and r.status == 200:
            while r.read(64):
                time.sleep(0.05)
            stats.add(kind, str(r.status), time.monotonic() - t)
            return
        payload = r.read()
        outcome = str(r.status)
        if r.status == 200 and body.get("stream") and b"data: [DONE]" not in payload:
            outcome = "stream_without_done"
        if r.status >= 400:
            try:
                json.loads(payload)["error"]["message"]
            except Exception:
                outcome = "%d_without_json" % r.status
        stats.add(kind, outcome, time.monotonic() - t)
    except Exception as e:  # noqa: BLE001 — every failure is counted by class
        stats.add(kind, "conn_error:" + type(e).__name__)
    finally:
        conn.close()


def worker(args, seed, stats, stop):
    rng = random.Random(seed)
    while not stop.is_set():
        one(args.host, args.port, args.model, weighted(rng), rng, stats, args.max_tokens)


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def metric(host, port, series):
    try:
        c = http.client.HTTPConnection(host, port, timeout=10)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    except Exception:  # noqa: BLE001
        return None
    return 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="the server's process id (for its memory)")
    p.add_argument("--model", default="m")
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--sample-every", type=float, default=10)
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        sys.exit("soak targets 127.0.0.1 / ::1 only")
    stats = Stats()
    stop = threading.Event()
    threads = [threading.Thread(target=worker, args=(args, i, stats, stop), daemon=True) for i in range(args.clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    samples = []
    kv = "novastack_kv_blocks_used{model=\"%s\"}" % args.model
    while time.monotonic() - start < args.seconds:
        time.sleep(min(args.sample_every, max(0.0, args.seconds - (time.monotonic() - start))))
        samples.append((time.monotonic() - start, rss_kib(args.pid), metric(args.host, args.port, kv)))
    stop.set()
    for t in threads:
        t.join(timeout=150)
    time.sleep(1.0)
    kv_after = metric(args.host, args.port, kv)
    elapsed = time.monotonic() - start

    by_outcome = Counter()
    for (_, o), n in stats.outcomes.items():
        cls = o if o.startswith("conn_error") or "without" in o else (o[0] + "xx" if o[0].isdigit() else o)
        by_outcome[cls] += n
    total = sum(stats.outcomes.values())
    print("\n## soak: %.0f s, %d clients, %d requests (%.1f/s)" % (elapsed, args.clients, total, total / elapsed))
    print("\n| outcome | count |\n| --- | --- |")
    for o, n in sorted(by_outcome.items()):
        print("| %s | %d |" % (o, n))
    print("\n| kind | requests | p50 s | p99 s |\n| --- | --- | --- | --- |")
    for kind, _ in KINDS:
        lat = stats.latency.get(kind, [])
        n = sum(v for (k, _), v in stats.outcomes.items() if k == kind)
        print("| %s | %d | %.3f | %.3f |" % (kind, n, pct(lat, 50), pct(lat, 99)))
    print("\n| t s | RSS MiB | KV blocks used |\n| --- | --- | --- |")
    for t, rss, used in samples:
        print("| %.0f | %s | %s |" % (t, "%.1f" % (rss / 1024) if rss else "-", used))
    rss = [r for _, r, _ in samples if r]
    checks = {
        "no 5xx": not any(k.startswith("5") for k in by_outcome),
        "no connection errors": not any(k.startswith("conn_error") for k in by_outcome),
        "every error is OpenAI JSON": not any("without_json" in k for k in by_outcome),
        "every stream ends in [DONE]": by_outcome.get("stream_without_done", 0) == 0,
        "every KV block back": kv_after == 0.0,
        # The first third is warm-up (allocator arenas, KV pages touched for the first
        # time); the last third may not grow past the middle third's peak by > 10%.
        "memory flat": len(rss) < 6
        or max(rss[2 * len(rss) // 3:]) <= 1.1 * max(rss[len(rss) // 3: 2 * len(rss) // 3]),
    }
    print("\n| check | result |\n| --- | --- |")
    for k, ok in checks.items():
        print("| %s | %s |" % (k, "pass" if ok else "FAIL"))
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
