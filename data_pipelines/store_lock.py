"""The store's locks: one writer (an exclusive `flock` on `<store>/.write.lock`), and readers' pins.

A reader pins the manifest generation it reads with a shared `flock` on that file (`pin`); the writer
unlinks a generation only while holding an exclusive one on it (`unlink_unpinned`). See store.py.

The kernel drops a flock when its holder exits or is killed, so a lock is never stale and needs no
clean-up. The writer's lock file is never written (an unchanged store keeps every file's bytes and mtime) and
never removed (a waiter could otherwise lock a removed file while a newcomer locks a new one); the
holder names itself in `<store>/.writer` ("pid epoch-seconds"), removed when it lets go, so that a
waiting writer can say whom it waits for. Within one process the writer's lock is re-entrant: nested blocks
share the one flock, and threads take turns.
"""
from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

WRITE_LOCK = ".write.lock"
WRITER = ".writer"


class _Hold:
    """This process's hold on one store's lock: its threads take turns, nested calls share it."""

    def __init__(self) -> None:
        self.turn = threading.RLock()
        self.fd: int | None = None
        self.depth = 0


_holds: dict[str, _Hold] = {}
_holds_guard = threading.Lock()


@contextmanager
def exclusive(store: Path, wait: bool, error: type[Exception]):
    """Hold the writer lock of existing directory `store` for the block.

    While another process holds it: print one line to stderr and wait, or with wait=False raise
    `error` with that line.
    """
    with _holds_guard:
        hold = _holds.setdefault(str(store.resolve()), _Hold())
    if not hold.turn.acquire(blocking=wait):
        raise error(f"store {store} is being written by another thread of pid {os.getpid()}")
    try:
        if hold.depth == 0:
            hold.fd = _lock(store, wait, error)
        hold.depth += 1
        try:
            yield
        finally:
            hold.depth -= 1
            if hold.depth == 0:
                _unlock(store, hold.fd)
    finally:
        hold.turn.release()


def _lock(store: Path, wait: bool, error: type[Exception]) -> int:
    """Take the exclusive flock and name the holder in .writer; returns the lock file's descriptor."""
    fd = os.open(store / WRITE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = f"store {store} is being written by {holder(store)}"
            if not wait:
                raise error(f"{busy}; not waiting (wait=false)") from None
            print(f"{busy}; waiting", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    (store / WRITER).write_text(f"{os.getpid()} {time.time():.3f}\n")
    return fd


def _unlock(store: Path, fd: int) -> None:
    (store / WRITER).unlink(missing_ok=True)
    fcntl.flock(fd, fcntl.LOCK_UN)  # explicit: a forked child sharing the descriptor must not keep it
    os.close(fd)


def holder(store: Path) -> str:
    """'pid N (since HH:MM:SS)' of the lock's holder, from .writer (written right after locking)."""
    for _ in range(50):
        try:
            pid, since = (store / WRITER).read_text().split()
            return f"pid {int(pid)} (since {time.strftime('%H:%M:%S', time.localtime(float(since)))})"
        except (OSError, ValueError):
            time.sleep(0.01)  # not written yet, or half written
    return "another process"


def pin(path: Path):
    """`path` open with a shared flock, or None when a writer is removing it or has removed it."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:  # still linked: not removed before we locked
            return f
    except (BlockingIOError, FileNotFoundError):
        pass
    f.close()
    return None


def unlink_unpinned(path: Path) -> None:
    """Unlink `path` unless a reader pins it (then a later write tries again); the writer calls this."""
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        path.unlink()  # while locked: a reader that pins it after this finds it unlinked and moves on
