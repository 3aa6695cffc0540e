"""What the entry points share: turning a user's mistake into a message, not a traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from normlab.errors import NormlabError


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Print a NormlabError as one paragraph and exit 1 in a single run.

    In a multirun the error is re-raised instead: Hydra records the job as failed and goes on
    with the others (exiting would end the whole sweep).
    """
    try:
        yield
    except NormlabError as err:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if multirun:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
