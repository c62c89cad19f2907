"""Atomic, durable file and directory writes: write beside the target, fsync, rename.

A command that fails half-way must leave no half-written file behind, and a reader
must never see a partial file or model bundle. ``os.replace`` is atomic on POSIX when
source and target share a filesystem, hence the temp file *beside* the target. Temp
files and folders are created with mode 0666 / 0777 so the process umask applies, as
it would to any file the user writes (``tempfile.mkstemp`` would force 0600).

A directory is replaced by exchanging it with the new one in a single
``renameat2(RENAME_EXCHANGE)`` call where the kernel and filesystem support it, so
some complete bundle is at the target path at every instant; elsewhere it falls back
to two renames (the old directory moved aside, then the new one in place).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _temp_name(target: Path, suffix: str) -> Path:
    return target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}{suffix}"


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's or directory's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success fsync it and rename it onto ``target``.

    The caller writes the temp path however it likes (pandas, numpy, pyarrow). On any
    exception the temp file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target, ".tmp" + target.suffix)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")



@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temp directory beside ``target``; on success it replaces ``target``.

    Every file in it is fsynced before the swap. With an exchange rename the old
    directory is swapped out in one step; otherwise it is moved aside and deleted
    only once the new one is in place. A failure at any point leaves either the old
    directory or the new one at ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target, ".tmp")
    os.mkdir(tmp, 0o777)  # the umask applies
    try:
        yield tmp
        for path in sorted(tmp.rglob("*"), reverse=True):
            fsync_path(path)
        fsync_path(tmp)
        if target.exists() and _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
        else:
            old = None
            if target.exists():
                old = _temp_name(target, ".old")
                os.replace(target, old)
            try:
                os.replace(tmp, target)
            except OSError:
                if old is not None:  # put the old directory back: never leave nothing at the target
                    os.replace(old, target)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        fsync_path(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))
