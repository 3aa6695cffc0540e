"""What happens inside the network while it trains, written to TensorBoard."""

from normlab.diagnostics.callback import NetworkDiagnostics

__all__ = ["NetworkDiagnostics"]
