"""Lightning callbacks used by the default configs."""

from normlab.callbacks.diagnostics import NetworkDiagnostics
from normlab.callbacks.history import MetricHistory
from normlab.callbacks.progress import TerminalProgressBar

__all__ = ["MetricHistory", "NetworkDiagnostics", "TerminalProgressBar"]
