"""Test hook for crash tests: pause a run at a named point so a test can SIGKILL it exactly there.

Inert unless HUMANSEG_FAULT_PAUSE is set, like HUMANSEG_FAULT_CRASH_URI in process.py. The value
is `<point>:<seconds>[:<nth>]`: the nth time (default 1) this process reaches <point>, it says so
on stderr and sleeps. Points: `planned` (shards planned, nothing processed), `unit` (a work unit
starts; earlier units' masks are written), `commit` (a shard's Parquet is written, its marker not yet).
"""
from __future__ import annotations

import os
import sys
import time

PAUSE_ENV = "HUMANSEG_FAULT_PAUSE"
_reached: dict[str, int] = {}


def pause_point(point: str) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    want, seconds, nth = (spec.split(":") + ["1"])[:3]
    if want != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] == int(nth):
        print(f"{PAUSE_ENV}: paused at {point}", file=sys.stderr, flush=True)
        time.sleep(float(seconds))
