"""The heap settings: glibc's tunables added to an environment once, the restart that applies
them, and the periodic release of free memory."""

from __future__ import annotations

import os

import pytest


def test_periodic_release_trims_at_most_once_a_period(monkeypatch):
    import hoicore.memory as M

    clock, trims = [100.0], []
    monkeypatch.setattr(M.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(M, "release_free_memory", lambda: trims.append(clock[0]) or True)
    release = M.PeriodicRelease(1.0)
    for t in (100.0, 100.4, 100.99, 101.0, 101.5, 103.2, 103.3):
        clock[0] = t
        release()
    assert trims == [100.0, 101.0, 103.2]  # the first call trims; then once a second at most
    every = M.PeriodicRelease(0.0)
    every(), every()
    assert len(trims) == 5


def test_heap_tunables_are_added_once_and_a_users_own_value_wins():
    from hoicore.memory import HEAP_TUNABLES, with_heap_tunables, without_heap_tunables

    env = with_heap_tunables({"PATH": "/bin"})
    assert env["GLIBC_TUNABLES"].split(":") == list(HEAP_TUNABLES) and env["PATH"] == "/bin"
    assert with_heap_tunables(env) == env
    mine = with_heap_tunables({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=3:glibc.pthread.rseq=0"})
    assert mine["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=3:glibc.pthread.rseq=0:glibc.malloc.mxfast=0"
    assert without_heap_tunables(mine) == {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}
    assert without_heap_tunables(env) == {"PATH": "/bin"}


_EXEC_CHILD = """
import os, sys
from hoicore.memory import exec_with_heap_tunables
exec_with_heap_tunables([sys.executable, "-c", "import os; print('restarted', os.environ['GLIBC_TUNABLES'])"])
print('not restarted', os.environ.get('GLIBC_TUNABLES'))
"""


_TUNED = "glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0"


@pytest.mark.parametrize("given, want", [(None, f"restarted {_TUNED}"), (_TUNED, f"not restarted {_TUNED}")])
def test_the_program_restarts_itself_once_with_the_heap_tunables(given, want):
    import subprocess
    import sys

    from hoicore.memory import without_heap_tunables

    env = without_heap_tunables(dict(os.environ))
    if given is not None:
        env["GLIBC_TUNABLES"] = given
    done = subprocess.run([sys.executable, "-c", _EXEC_CHILD], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == want
