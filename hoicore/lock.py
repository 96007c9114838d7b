"""One run at a time per output: an exclusive lock file ``PATH.lock`` beside the output.

The lock is a small JSON file ``{"pid", "host", "boot_id", "pid_ns", "started", "pid_start",
"token"}`` created
atomically (``O_CREAT | O_EXCL``: of two runs that create it at once, one gets an error),
so it works on a shared file system too, as long as only one process of a run holds it
(the coordinator; dask workers never lock). A second run is refused at once, naming the
holder.

A lock whose holder died on this host (its pid is gone, or now belongs to a process that
started later) is taken over. "This host" is judged by more than the host name, which
containers with host networking share without sharing process IDs: the lock records the
kernel's boot id and the holder's PID namespace, and a lock whose host name, boot id or
PID namespace differs from the taker's (or that lacks them: an earlier version wrote it)
is never taken over, since its holder cannot be checked from here. A stale lock is taken
over under an ``flock`` of the stale file itself (released by the kernel if the taker
dies): the taker checks that the path still names that same stale file and atomically
replaces it with its own; a second taker then finds a live lock and is refused.

    with exclusive(out, what="teacher cache"):
        ...  # out is ours until the block ends
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import HoiError
from .files import pid_alive


class LockError(HoiError, ValueError):
    """Another run holds the output (or left a lock that cannot be judged)."""


def lock_path(path) -> Path:
    """``PATH.lock``, beside the output (never inside it: outputs get renamed)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _process_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (Linux), or None where unknown.
    Tells a live holder from an unrelated process that got its pid later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in () may hold spaces


def _boot_id() -> str | None:
    """The running kernel's boot id (Linux; None elsewhere): differs after a reboot and
    between machines, shared by the containers of one kernel."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """This process's PID namespace (Linux, e.g. ``pid:[4026531836]``; None elsewhere)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _unjudgeable(old: dict, mine: dict) -> str | None:
    """Why the holder's process cannot be checked from here, or None when it can."""
    if old.get("host") != mine["host"]:
        return "another host"
    if "boot_id" not in old or "pid_ns" not in old:
        return "written by an earlier version, which recorded no boot id or PID namespace"
    if old["boot_id"] != mine["boot_id"]:
        return "another boot of this host, or another machine of the same name"
    if old["pid_ns"] != mine["pid_ns"]:
        return "another PID namespace: a container that shares this host name"
    return None


def _alive(holder: dict) -> bool:
    """Whether the holder (on this host) still runs."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or not pid_alive(pid):
        return False
    started = holder.get("pid_start")
    now = _process_start(pid)
    return started is None or now is None or now == started


def describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _read(fd: int) -> dict | None:
    """The holder recorded in an open lock file, or None when it is empty or not ours."""
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and "pid" in holder and "host" in holder else None


@dataclass
class Lock:
    """A held lock; :meth:`release` (or leaving ``exclusive``) removes it."""

    path: Path
    holder: dict

    def release(self) -> None:
        """Remove the lock file if it is still ours (never another run's)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            mine = (_read(fd) or {}).get("token") == self.holder["token"]
        finally:
            os.close(fd)
        if mine:
            self.path.unlink(missing_ok=True)


def _content() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(), "pid_ns": _pid_namespace(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid_start": _process_start(os.getpid()),
            "token": uuid.uuid4().hex}


def _create(path: Path, holder: dict) -> bool:
    """Create the lock file holding ``holder``; False when it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as e:
        raise LockError(f"{path}: cannot create the output's lock file ({e.strerror}); is {path.parent} "
                        "writable?") from e
    try:
        os.write(fd, json.dumps(holder).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _take_over(path: Path, holder: dict, what: str, output: Path) -> bool:
    """Replace the lock at ``path`` if it is stale; False when it vanished meanwhile (retry).
    Raises LockError when it is held or cannot be judged."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one taker at a time per stale file
        except OSError:  # a file system without locks: the inode check below still narrows the race
            pass
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # replaced or released while we waited: judge the new one
            return False
        old = _read(fd)
        if old is None and time.time() - os.fstat(fd).st_mtime < 5:
            time.sleep(0.05)  # just created, its content not yet written: look again
            return False
        if old is None:
            raise LockError(f"{path} exists but names no holder (a run is starting, or one died while taking "
                            f"it); if no run is writing {output}, delete {path}")
        why = _unjudgeable(old, holder)
        if why:
            raise LockError(f"{output} is locked by {describe(old)} ({why}: a lock whose holder cannot be "
                            f"checked from here is never taken over automatically); if no run is writing it, "
                            f"delete {path}")
        if _alive(old):
            raise LockError(f"{output} is in use by another {what} run ({path}: {describe(old)}); wait for it "
                            "to end (or stop it), or choose another output")
        tmp = path.with_name(f".{path.name}.{holder['token']}")
        tmp.write_text(json.dumps(holder))
        os.replace(tmp, path)  # atomic: the path never lacks a lock in between
        return True
    finally:
        os.close(fd)  # releases the flock


def _sweep_takeover_temporaries(path: Path, holder: dict) -> None:
    """Delete ``.NAME.lock.<token>`` files that takers killed mid-takeover left: once we hold
    the lock, no other taker writes one (a taker writes it only after judging the lock stale)."""
    for left in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if left.name != f".{path.name}.{holder['token']}":
            left.unlink(missing_ok=True)


def acquire(path, *, what: str = "output") -> Lock:
    """Hold ``PATH.lock`` for the output ``path``; LockError naming the holder if another run has it.

    ``what`` names the kind of run in the message ("teacher cache", "training", ...)."""
    output = Path(path)
    lp = lock_path(output)
    lp.parent.mkdir(parents=True, exist_ok=True)
    holder = _content()
    for _ in range(100):  # each round: the lock appeared or vanished under us; rarely more than one
        if _create(lp, holder) or _take_over(lp, holder, what, output):
            _sweep_takeover_temporaries(lp, holder)
            return Lock(lp, holder)
    raise LockError(f"{lp}: could not take the lock (it keeps changing hands); try again")


@contextmanager
def exclusive(path, *, what: str = "output"):
    """Hold the lock of output ``path`` for the block (see :func:`acquire`); yields the Lock."""
    lock = acquire(path, what=what)
    try:
        yield lock
    finally:
        lock.release()


def holder_of(path) -> dict | None:
    """The recorded holder of output ``path``'s lock, or None when it is not locked."""
    try:
        fd = os.open(lock_path(path), os.O_RDONLY)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    try:
        return _read(fd)
    finally:
        os.close(fd)
