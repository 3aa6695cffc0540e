"""What the entry points share: turning a user's mistake into a message, not a traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from normlab.errors import NormlabError


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra --multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Print a NormlabError as one paragraph and exit 1 in a single run.

    In a multirun the error is re-raised instead: Hydra records the job as failed and goes on
    with the others (exiting would end the whole sweep).
    """
    try:
        yield
    except NormlabError as err:
        if in_multirun():
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the run is marked "interrupted"; a sweep stops here.
        sys.exit(130)


@contextlib.contextmanager
def explain_unknown_keys(
    overrides: list[str], config_dir: Path, config_name: str
) -> Iterator[None]:
    """After Hydra rejects the command line, name the setting a mistyped key probably meant
    (Hydra's own advice, to add the key with `+`, is wrong for a typo)."""
    try:
        yield
    except SystemExit as stop:
        if stop.code == 1:
            from normlab.config import unknown_override_hints

            for hint in unknown_override_hints(overrides, config_dir, config_name):
                print(f"error: {hint}", file=sys.stderr)
        raise
