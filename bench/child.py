"""Measuring in a fresh interpreter: a child's peak RSS is then its own."""

from __future__ import annotations

import json
import subprocess
import sys

# Python code a child ends with: ``peak``, its own peak RSS in MB (VmHWM; ru_maxrss would keep
# the parent's across fork and exec), -1 where /proc is missing.
PEAK_RSS = """
try:
    peak = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))) / 1024
except OSError:
    peak = -1
"""


def run_json(code: str, *args, env: dict[str, str] | None = None) -> dict:
    """The JSON that ``code``, run as ``python -c code args...`` (in environment ``env``,
    else this one), prints on its last line."""
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True,
                          env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])
