"""Writing files so that a reader never sees half of one.

Results, reports and checkpoints are read while runs are still going (the sweep report, a
user's `cat results.json`) and must survive a process killed mid-write. Each is written to a
temporary file in the same folder (so the final rename stays on one file system), flushed to
disk, then renamed over the target in one step.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file that replaces `path` when the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    with atomic_open(path) as f:
        f.write(json.dumps(data, indent=2, default=str) + "\n")
