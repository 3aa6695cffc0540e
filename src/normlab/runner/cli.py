"""What the entry points share: a user's mistake as a message, not a traceback; SIGTERM
handled like Ctrl-C; a console about the experiment."""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from normlab.errors import NormlabError
from normlab.runner.console import hide_srun_hint_outside_slurm, in_multirun


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
        if stop.code == 1 and composition_failed(stop):
            from normlab.runner.hints import unknown_override_hints

            for hint in unknown_override_hints(overrides, config_dir, config_name):
                print(f"error: {hint}", file=sys.stderr)
        raise


def composition_failed(stop: SystemExit) -> bool:
    """Whether Hydra exited because it could not compose the config from the command line.

    Hydra reports the error and calls sys.exit(1) while handling it, so the exception it
    handled is the exit's context. Other exits with code 1 (a NormlabError from the checks
    or the run, a failed task) come from a config that composed: hints about the command
    line would be beside the point there.
    """
    from hydra.errors import ConfigCompositionException, OverrideParseException

    return isinstance(stop.__context__, ConfigCompositionException | OverrideParseException)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM handled like Ctrl-C, so a stopped run can say so in its results.json.

    Python's default SIGTERM handler ends the process on the spot: no `finally` block runs and
    a run stopped by `kill`, a scheduler or a cluster's time limit would leave no trace of why.
    Raised as KeyboardInterrupt instead, it takes Lightning's graceful-shutdown path (the same
    as Ctrl-C) and `normlab.runner.train` records the run as "interrupted".
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (joblib workers)
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Lightning's INFO lines that say what normlab's own lines already say (the device, the end
# of fit, the checkpoint tested), or advertise.
_CHATTER = (
    "💡 Tip",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Loading `train_dataloader` to estimate",
    "`Trainer.fit` stopped:",
    "Restoring states from the checkpoint",
    "Loaded model weights from the checkpoint",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_CHATTER)


def _disk_full_in_a_writer_thread(args: threading.ExceptHookArgs) -> None:
    """A logger's writer thread (TensorBoard's event file writer) that meets a full disk
    says so in one line; the run itself stops with the message that names the folder."""
    error = args.exc_value
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        name = args.thread.name if args.thread else "a writer thread"
        logging.getLogger("normlab").error("%s could not write: %s", name, error.strerror)
        return
    _default_thread_hook(args)


_default_thread_hook = threading.excepthook


def quiet_lightning() -> None:
    """Keep the console about the experiment: drop Lightning's advertising and warnings that do
    not apply to in-memory tensor loaders."""
    # `import lightning` gives the "lightning" logger its own console handler. Imported after
    # Hydra has set up logging (train.py imports it lazily), Lightning's messages then reach
    # both that handler and Hydra's: every line printed twice, and the first copy not in
    # train.log. Hydra's handlers already cover the console and the log file.
    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()
        # Imported before any handler existed (a script that imports Lightning at the top),
        # lightning.pytorch and lightning.fabric gave themselves a console handler and
        # stopped propagating: their lines reached neither the log file nor normlab's console.
        for name in ("lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    threading.excepthook = _disk_full_in_a_writer_thread
    # Warnings through logging: on the console as before, and in train.log as well.
    logging.captureWarnings(True)
    # Data already sits in memory on the training device: worker processes would only copy it.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Short epochs on small datasets are expected (digits: 39 batches).
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    # Lightning 2.6 calling a deprecated torch.utils._pytree API; nothing for users to do.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    # Under DDP: torchmetrics objects sync themselves; the other epoch values logged
    # (val/acc_best, epoch time) are the same on every rank or rank 0's own by design.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed.*")
    hide_srun_hint_outside_slurm()
