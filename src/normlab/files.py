"""Writing files so that a reader never sees half of one.

Results, reports and checkpoints are read while runs are still going (the sweep report, a
user's `cat results.json`) and must survive a process killed mid-write. Each is written to a
temporary file in the same folder (so the final rename stays on one file system, whatever
`$TMPDIR` is), flushed to disk, then renamed over the target in one step. A full disk is
reported as a DiskFullError naming the folder; the previous version of the file stays.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from normlab.errors import NormlabError


class DiskFullError(NormlabError):
    """No space left on the device that holds a run's folder."""


def absolute_path(path: str | Path) -> Path:
    """`path` with `~` expanded, made absolute the way Hydra makes its output folders
    (os.path.abspath: `a/../b` becomes `b`, symbolic links are kept). Every folder normlab
    locks or checks goes through here, so that one folder has one name whatever its spelling
    on the command line."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def disk_full(folder: str | Path, what: str = "") -> DiskFullError:
    folder = Path(folder)
    try:
        stats = os.statvfs(folder if folder.exists() else folder.parent)
        free = stats.f_bavail * stats.f_frsize
        left = f" ({free / 2**20:.1f} MiB free)"
    except OSError:
        left = ""
    return DiskFullError(
        f"no space left on the device holding {folder}{left}{': ' + what if what else ''}. "
        "Free some space (a run needs a few MB for its checkpoints and logs, more for "
        "CIFAR-10 data) or point paths.log_dir at another disk; files already complete "
        "there were kept."
    )


@contextlib.contextmanager
def reraise_disk_full(folder: str | Path, what: str = "") -> Iterator[None]:
    """Turn OSError ENOSPC (and EDQUOT) inside the block into a DiskFullError naming `folder`."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(folder, what) from None
        raise


# Fault injection for the tests (tests/test_faults.py): NORMLAB_FAULT=<file name>:<n>:<phase>
# kills this process with SIGKILL the n-th time it writes that file, at that phase ("opened":
# temporary file created; "written": complete but not renamed; "renamed": in place).
_FAULT = os.environ.get("NORMLAB_FAULT", "")
_writes: dict[str, int] = {}


def _fault_point(path: Path, phase: str) -> None:
    name, _, rest = _FAULT.partition(":")
    count, _, at = rest.partition(":")
    if name != path.name:
        return
    if phase == "opened":
        _writes[name] = _writes.get(name, 0) + 1
    if at == phase and _writes.get(name) == int(count):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file that replaces `path` when the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with reraise_disk_full(path.parent, f"could not write {path.name}"):
            with open(tmp, mode, **kwargs) as f:
                if _FAULT:
                    _fault_point(path, "opened")
                yield f
                f.flush()
                os.fsync(f.fileno())
            if _FAULT:
                _fault_point(path, "written")
            os.replace(tmp, path)
            if _FAULT:
                _fault_point(path, "renamed")
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy or torch scalar
        return finite(value.item())
    return value


def to_json(data: Mapping[str, Any]) -> str:
    """Strict JSON (null, never NaN or Infinity), indented."""
    return json.dumps(finite(data), indent=2, default=str, allow_nan=False) + "\n"


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    text = to_json(data)
    with atomic_open(path) as f:
        f.write(text)


class FolderLock:
    """An exclusive lock on a folder itself (flock on the directory): no lock file to leave
    behind, and it moves with the folder. Where the file system cannot lock (some network
    file systems, Windows), `acquire` succeeds without a lock."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False when another open of the folder holds it."""
        try:
            import fcntl
        except ImportError:
            return True
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:
            os.close(fd)
            return True
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None


def folder_in_use(folder: str | Path) -> bool:
    """Whether a process holds `folder`'s lock (a run still going)."""
    lock = FolderLock(folder)
    try:
        if not lock.acquire():
            return True
    except OSError:
        return False
    lock.release()
    return False
