"""Output files: checked before any work starts, and written atomically through a temporary file in the same
folder (its name unique to the process), so that a failure never leaves a half-written file behind. Every
problem is a one-line MechestError."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from mechest.errors import MechestError


def reason(error: OSError) -> str:
    """The operating system's words for ``error`` (e.g. "Permission denied")."""
    return error.strerror or str(error)


def check_writable_directory(directory: Path, path: Path) -> None:
    """A MechestError (about writing ``path``) unless a new file can be created in ``directory``.

    The check creates and removes a file: os.access answers "yes" to root on read-only mounts and in /sys.
    """
    try:
        handle, probe = tempfile.mkstemp(prefix=".mechest-probe-", dir=directory)
    except OSError as error:
        raise MechestError(f"cannot write {path}: directory {directory} is not writable ({reason(error)})") from None
    os.close(handle)
    with suppress(OSError):
        os.unlink(probe)


def check_output_path(path: str | Path) -> Path:
    """``path`` as a Path, or a MechestError unless a file can be written there: its folder exists and accepts
    new files, and ``path`` is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise MechestError(f"cannot write {path}: it is a directory")
    if not path.parent.is_dir():
        raise MechestError(f"cannot write {path}: directory {path.parent} does not exist")
    check_writable_directory(path.parent, path)
    return path


def check_output_directory(path: str | Path) -> Path:
    """``path`` as a Path, or a MechestError unless files can be written into it: it is a writable folder, or
    it does not exist yet and its nearest existing ancestor is a writable folder (it will be created)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise MechestError(f"cannot write into {path}: {existing} is not a directory")
    check_writable_directory(existing, path)
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` for the block to write; it replaces ``path`` when the block finishes and
    is removed if the block fails. Its name holds the process id and a random part, so concurrent writers never
    share it. OSErrors become a one-line MechestError."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:  # created here, with the permissions the umask gives (mkstemp's would be 0600)
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as error:
        raise MechestError(f"cannot write {path}: {reason(error)}") from None
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        raise MechestError(f"cannot write {path}: {reason(error)}") from None
    finally:
        with suppress(OSError):  # cleaning up must not raise again (e.g. EROFS on a read-only mount)
            temporary.unlink(missing_ok=True)


def write_npz_atomically(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez of ``arrays`` to ``path``."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **arrays)


def write_text_atomically(path: str | Path, text: str) -> None:
    """``text`` to ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def process_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def stale(owner: str) -> bool:
    """Whether the lock text ``owner`` ("PID HOST") names a process of this machine that is gone. A lock of
    another machine, or one still being written (empty), is never stale: we cannot tell."""
    pid, _, host = owner.partition(" ")
    return pid.isdigit() and host == socket.gethostname() and not process_running(int(pid))


def create_lock(lock: Path) -> bool:
    """Create ``lock`` holding "PID HOST" of this process (O_CREAT | O_EXCL: atomic); False if it exists."""
    try:
        handle = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    except OSError as error:
        raise MechestError(f"cannot write {lock}: {reason(error)}") from None
    with os.fdopen(handle, "w") as file:
        file.write(f"{os.getpid()} {socket.gethostname()}")
    return True


@contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold ``PATH.lock`` while the block runs, so that a second run writing ``path`` stops with a one-line error
    instead of sharing its checkpoint and doing the work twice. The lock holds "PID HOST" and is removed when the
    block ends; one left by a process of this machine that is gone (SIGKILL, a crash) is taken over."""
    path = Path(path)
    lock = lock_path(path)
    if not create_lock(lock):
        try:
            owner = lock.read_text().strip()
        except OSError:
            owner = ""
        if stale(owner):
            with suppress(FileNotFoundError):
                lock.unlink()
        if not stale(owner) or not create_lock(lock):
            raise MechestError(f"{path} is being written by another mechest run (process {owner or '?'}); "
                               f"wait for it, or remove {lock} if that run is gone")
    try:
        yield
    finally:
        with suppress(OSError):
            lock.unlink()
