"""Lightning callbacks used by the default configs."""

from normlab.callbacks.diagnostics import NetworkDiagnostics
from normlab.callbacks.divergence import DivergenceGuard
from normlab.callbacks.history import MetricHistory
from normlab.callbacks.progress import TerminalProgressBar
from normlab.callbacks.rng import RNGState

__all__ = [
    "DivergenceGuard",
    "MetricHistory",
    "NetworkDiagnostics",
    "RNGState",
    "TerminalProgressBar",
]
