"""``hoi`` restarts itself once with the heap tunables for the long streaming runs
(teacher-cache, train, ablate) and for no other command, never running code from the
working folder."""

from __future__ import annotations

import os

import pytest


def test_python_m_hoi_runs_through_the_restart(tmp_path):
    import subprocess
    import sys

    from hoicore.memory import without_heap_tunables

    done = subprocess.run([sys.executable, "-m", "hoi", "train", "--help"],
                          env=without_heap_tunables(dict(os.environ)), capture_output=True, text=True, check=True,
                          cwd=tmp_path)
    assert done.stdout.startswith("Usage: hoi train")


_RUN_CHILD = """
import sys
import hoi.cli
hoi.cli.exec_with_heap_tunables = lambda argv: print("restart", argv[3:])
hoi.cli.main = lambda **kw: print("main")
sys.argv = ["hoi", *sys.argv[1:]]
hoi.cli.run()
"""


@pytest.mark.parametrize("args, restarted", [
    (["-v", "train", "--cache", "demo"], True), (["teacher-cache", "--help"], True), (["ablate", "-v"], True),
    (["demo", "--output", "x"], False), (["-q", "demo"], False), (["eval", "--cache", "c"], False),
    (["detect", "--help"], False), (["--version"], False)])
def test_the_long_streaming_runs_and_only_they_restart_with_the_heap_tunables(args, restarted):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _RUN_CHILD, *args], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ([f"restart {args}"] if restarted else []) + ["main"]


def test_the_restart_never_runs_code_from_the_working_folder(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from hoicore.memory import without_heap_tunables

    (tmp_path / "numpy.py").write_text("print('HIJACKED numpy')\n")
    (tmp_path / "hoi").mkdir()
    (tmp_path / "hoi" / "__init__.py").write_text("print('HIJACKED hoi')\n")
    program = Path(sys.executable).with_name("hoi")  # the console script, as a user types it
    done = subprocess.run([str(program), "--version"], env=without_heap_tunables(dict(os.environ)),
                          capture_output=True, text=True, check=True, cwd=tmp_path)
    assert done.stdout.startswith("hoi, version") and "HIJACKED" not in done.stdout + done.stderr
    usage = subprocess.run([str(program), "train", "--help"], env=without_heap_tunables(dict(os.environ)),
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert usage.startswith("Usage: hoi train")


def test_a_restarted_command_says_so_under_v(tmp_path):
    import subprocess
    import sys

    from hoicore.memory import without_heap_tunables

    env = without_heap_tunables(dict(os.environ))
    said = subprocess.run([sys.executable, "-m", "hoi", "train", "--cache", str(tmp_path), "-o",
                           str(tmp_path / "run"), "-v"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert "hoi train runs under GLIBC_TUNABLES=" in said.stderr and "tcache_count=0" in said.stderr
    quiet = subprocess.run([sys.executable, "-m", "hoi", "train", "--cache", str(tmp_path), "-o",
                            str(tmp_path / "run")], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert "GLIBC_TUNABLES" not in quiet.stderr
