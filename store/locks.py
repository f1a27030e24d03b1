"""Inter-process coordination on one store: file locks (flock), the process owner
tag that marks whose temp entries are whose, and liveness checks.

- ROOT/gc.lock: every operation that writes blobs or layer dirs and then records
  them holds it *shared* from the first byte written to the commit of its
  metadata; gc holds it *exclusive* while it decides and deletes. So gc never
  sees a blob that is written but not yet recorded.
- ROOT/locks/<name>.lock: one per extracted-layer directory name, held while the
  directory is being made (two processes never extract the same layer at once).
- ROOT/tmp/<owner>.owner: held exclusively by a live process for its lifetime; its
  temp entries are named `<owner>.<something>`. When the lock can be taken, the
  owner is dead and its temp entries are garbage.

flock locks die with their process (SIGKILL included): no stale lock survives a crash.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lamina.store.errors import StoreError

OWNER_PREFIX = "p"
OWNER_SUFFIX = ".owner"
STALE_CREATION_WINDOW_S = 60.0


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def try_lock(path: Path, exclusive: bool = True) -> int | None:
    """Open `path` (created if needed) and try to flock it without waiting: the fd
    on success, None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def is_locked(path: Path) -> bool:
    """True when some live process holds a flock on `path` (False if it does not exist)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


@contextmanager
def flocked(path: Path, exclusive: bool = True) -> Iterator[None]:
    """Hold a blocking flock on `path` for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


class GcLock:
    """ROOT/gc.lock, reentrant within one process for the shared side."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.Lock()
        self._shared_fd: int | None = None
        self._shared_depth = 0
        self._pid = os.getpid()
        self._mine = threading.local()  # this thread's nesting depth

    def _reset_after_fork(self) -> None:
        if self._pid != os.getpid():  # a forked child does not own the parent's lock
            self._pid = os.getpid()
            self._shared_fd = None
            self._shared_depth = 0
            self._mine = threading.local()

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Writers: many at once, never together with gc."""
        with self._mutex:
            self._reset_after_fork()
            if self._shared_depth == 0:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                except BaseException:
                    os.close(fd)
                    raise
                self._shared_fd = fd
            self._shared_depth += 1
        self._mine.depth = getattr(self._mine, "depth", 0) + 1
        try:
            yield
        finally:
            self._mine.depth -= 1
            with self._mutex:
                self._shared_depth -= 1
                if self._shared_depth == 0 and self._shared_fd is not None:
                    os.close(self._shared_fd)
                    self._shared_fd = None

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """gc: alone on the store."""
        self._reset_after_fork()
        if getattr(self._mine, "depth", 0):  # would wait for itself forever
            raise StoreError("gc cannot run inside a store write of the same thread")
        with flocked(self.path, exclusive=True):
            yield


class Owner:
    """This process's claim on its temp entries: ROOT/tmp/<tag>.owner, flocked."""

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        self.pid = os.getpid()
        self.tag = f"{OWNER_PREFIX}{self.pid}-{secrets.token_hex(4)}"
        path = tmp_dir / (self.tag + OWNER_SUFFIX)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        self.path = path
        self._counter = 0
        self._mutex = threading.Lock()

    def temp_path(self, purpose: str) -> Path:
        """A fresh name in ROOT/tmp owned by this process (nothing is created)."""
        with self._mutex:
            self._counter += 1
            n = self._counter
        return self.tmp_dir / f"{self.tag}.{purpose}-{n}-{secrets.token_hex(3)}"

    def close(self) -> None:
        if self._fd is not None and os.getpid() == self.pid:
            for entry in list(self.tmp_dir.glob(self.tag + ".*")):
                if entry != self.path:
                    remove_tree(entry)
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            os.close(self._fd)
        self._fd = None


def _owner_of(name: str) -> tuple[str, int] | None:
    """`p1234-abcd.whatever` -> ("p1234-abcd", 1234)."""
    if not name.startswith(OWNER_PREFIX):
        return None
    tag = name.split(".", 1)[0]
    pid_part = tag[len(OWNER_PREFIX):].split("-", 1)[0]
    if not pid_part.isdigit():
        return None
    return tag, int(pid_part)


def clean_stale_temp(tmp_dir: Path, keep_tag: str | None = None) -> int:
    """Remove temp entries whose owner process is dead. Returns how many went."""
    removed = 0
    try:
        names = os.listdir(tmp_dir)
    except FileNotFoundError:
        return 0
    verdict: dict[str, bool] = {}
    now = time.time()
    for name in names:
        owner = _owner_of(name)
        if owner is None:
            continue
        tag, pid = owner
        if tag == keep_tag:
            continue
        if tag not in verdict:
            lock = tmp_dir / (tag + OWNER_SUFFIX)
            if not pid_alive(pid):
                stale = True
            elif lock.exists():
                # alive pid: stale only if nobody holds the lock (pid reused) and the
                # lock is old enough not to be in its creation window
                try:
                    old = now - lock.stat().st_mtime > STALE_CREATION_WINDOW_S
                except FileNotFoundError:
                    old = False
                stale = old and not is_locked(lock)
            else:
                stale = False
            verdict[tag] = stale
        if verdict[tag]:
            path = tmp_dir / name
            if not name.endswith(OWNER_SUFFIX):
                remove_tree(path)
                removed += 1
    for tag, stale in verdict.items():
        if stale:
            try:
                (tmp_dir / (tag + OWNER_SUFFIX)).unlink()
            except FileNotFoundError:
                pass
    return removed


def remove_tree(path: Path) -> None:
    """rm -rf that also copes with read-only dirs and immutable-looking modes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    import stat as _stat
    if not _stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return

    def onerror(func, p, exc_info):
        e = exc_info[1]
        if isinstance(e, FileNotFoundError):
            return
        if isinstance(e, PermissionError):
            try:
                os.chmod(os.path.dirname(p), 0o700)
                os.chmod(p, 0o700, follow_symlinks=False)
            except OSError:
                pass
            try:
                func(p)
                return
            except FileNotFoundError:
                return
        raise e

    try:
        shutil.rmtree(path, onerror=onerror)
    except RecursionError:  # nested deeper than Python's recursion limit (a hostile layer)
        from lamina.store.tarextract import remove_tree as remove_tree_iteratively
        parent = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            remove_tree_iteratively(parent, os.path.basename(os.path.abspath(path)))
        finally:
            os.close(parent)
