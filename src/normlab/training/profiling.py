"""The Trainer's profiler when none is configured.

Lightning wraps every hook call in `trainer.profiler.profile(name)`, about 130 times a training
step with normlab's callbacks. Its default, `PassThroughProfiler`, records nothing but still
builds a generator-based context manager for each call, which at batch 4 on a CPU adds up to a
noticeable share of the step. This one hands back one shared no-op context instead.
`trainer.profiler=simple` (or `debug=profile`) replaces it as before.
"""

from __future__ import annotations

import contextlib
from typing import Any

from lightning.pytorch.profilers import PassThroughProfiler

_NO_OP = contextlib.nullcontext()


class NoProfiler(PassThroughProfiler):
    """A `PassThroughProfiler` (Lightning treats it as "not profiling") without per-call cost."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager[Any]:
        return _NO_OP
