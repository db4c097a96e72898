"""What the SDK check scripts share: the environment they run in and the check runner
(one line per check, every check run, a non-zero exit if any failed)."""

import os
import sys

BASE = os.environ["NOVASTACK_BASE_URL"]
KEY = os.environ["NOVASTACK_KEY"]
MODEL = os.environ["NOVASTACK_MODEL"]

checks = []


def check(fn):
    checks.append(fn)
    return fn


def run(label):
    failed = 0
    for fn in checks:
        try:
            fn()
            print(f"ok   {fn.__name__}")
        except Exception as e:  # report every check, fail at the end
            failed += 1
            print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}")
    print(f"{label}: {len(checks) - failed}/{len(checks)} checks passed")
    sys.exit(1 if failed else 0)
