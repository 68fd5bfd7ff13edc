"""Crash-safe writes for artifacts directories: a kill at any instant leaves the old complete
file or directory, or the new complete one, never a half-written one or nothing.

- files (manifest, model card, reports): a temporary file beside the target, fsync'd, renamed
  over it, and the directory fsync'd so the rename itself survives a power cut;
- directories (`lantern-export --force`): the new directory is swapped with the old one in one
  renameat2(RENAME_EXCHANGE) call where the OS has it; elsewhere by two renames, and the next
  export to the same place puts back an old directory that a kill left set aside;
- leftovers of killed runs (`.NAME.partial-PID-*`, `.NAME.old-PID`, `.NAME.tmp-PID`) are
  removed by the next run,
  unless process PID is still running.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return                                   # not every OS can open a directory
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def partial_prefix(name: str) -> str:
    """mkdtemp prefix of a work directory for `name`, carrying this process's id."""
    return f".{name}.partial-{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True                              # exists, owned by someone else
    return True


def clean_stale(parent: Path, name: str | None = None) -> None:
    """Remove what killed runs left beside parent/name (any name: None), and restore an old
    directory that a kill left set aside."""
    stem = re.escape(name) if name else r"[^/]+?"
    pattern = re.compile(rf"\.({stem})\.(partial|old|tmp)-(\d*)")
    if not parent.is_dir():
        return
    for entry in sorted(parent.iterdir()):
        match = pattern.match(entry.name)
        if not match or (match.group(3) and _alive(int(match.group(3)))):
            continue
        if match.group(2) == "old" and not (parent / match.group(1)).exists():
            entry.rename(parent / match.group(1))   # killed between the two renames of --force
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the OS cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False


def replace_dir(new: Path, dest: Path) -> None:
    """Put directory `new` at `dest`; an existing `dest` is replaced, never left missing."""
    if not dest.exists():
        new.rename(dest)
    elif _exchange(new, dest):
        shutil.rmtree(new, ignore_errors=True)   # `new` now names the old directory
    else:
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
        try:
            new.rename(dest)
        except OSError:
            old.rename(dest)                     # put the previous artifacts back
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dest.parent)
