"""wav2vec 2.0 / XLS-R model, masking and pretraining objective."""

from xlsr.model.loss import pretraining_loss
from xlsr.model.masking import compute_mask_indices, sample_negatives
from xlsr.model.wav2vec2 import PretrainingOutput, Wav2Vec2Model

__all__ = [
    "PretrainingOutput",
    "Wav2Vec2Model",
    "compute_mask_indices",
    "pretraining_loss",
    "sample_negatives",
]
