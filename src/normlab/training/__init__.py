"""Lightning, without Hydra: the LightningModule, the schedules and the training callbacks."""

from normlab.training.checkpoints import ModelCheckpoint
from normlab.training.divergence import DivergenceGuard, divergence_record
from normlab.training.evaluations import BatchNormEvaluations, TrainAccuracyEval
from normlab.training.history import MetricHistory
from normlab.training.module import ImageClassifier
from normlab.training.progress import TerminalProgressBar
from normlab.training.rng import RNGState

__all__ = [
    "BatchNormEvaluations",
    "DivergenceGuard",
    "ImageClassifier",
    "MetricHistory",
    "ModelCheckpoint",
    "RNGState",
    "TerminalProgressBar",
    "TrainAccuracyEval",
    "divergence_record",
]
