"""Keep the console about the experiment: drop Lightning's advertising and warnings that do
not apply to in-memory tensor loaders."""

from __future__ import annotations

import logging
import warnings


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_lightning() -> None:
    # `import lightning` gives the "lightning" logger its own console handler. Imported after
    # Hydra has set up logging (train.py imports it lazily), Lightning's messages then reach
    # both that handler and Hydra's: every line printed twice, and the first copy not in
    # train.log. Hydra's handlers already cover the console and the log file.
    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    # Data already sits in memory on the training device: worker processes would only copy it.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Short epochs on small datasets are expected (digits: 39 batches).
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    # Lightning 2.6 calling a deprecated torch.utils._pytree API; nothing for users to do.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    # Under DDP: torchmetrics objects sync themselves; the other epoch values logged
    # (val/acc_best, epoch time) are the same on every rank or rank 0's own by design.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed.*")
