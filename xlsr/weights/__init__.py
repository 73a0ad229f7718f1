"""Model weights in and out of every format xlsr reads, behind one function.

``read_weights(path) -> ModelWeights`` (architecture, objective, full CPU state dict) asks each
reader of `READERS`, in order, whether the path is its format:

- `training_checkpoint`: ``<run>/checkpoints/step-N/`` (DCP or DeepSpeed files + config.yaml);
- `hf`: a Hugging Face ``Wav2Vec2ForPreTraining`` or ``Wav2Vec2Model`` directory;
- `model_file`: a ``.pt`` written by `xlsr import`, else a fairseq wav2vec 2.0 ``.pt``
  (`xlsr.model.interop`).

`checkpoint.init_from`, `xlsr export`, `xlsr probe` and continued pretraining all read through it.
No reader executes code from a file: pickles are unpickled with allow-lists or ``weights_only``,
and a refusal is one line naming the file (`UnreadableCheckpointError`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xlsr.config import ObjectiveConfig
from xlsr.model.interop import UnreadableCheckpointError, load_fairseq_checkpoint
from xlsr.weights.base import ENCODER_PREFIXES, ModelWeights
from xlsr.weights.hf import is_hf_directory, read_hf_directory
from xlsr.weights.model_file import is_model_file, read_model_file
from xlsr.weights.training_checkpoint import (
    is_training_checkpoint,
    load_model_state,
    read_training_checkpoint,
)


def read_fairseq(path: Path) -> ModelWeights:
    cfg, w2v2, state = load_fairseq_checkpoint(path)
    return ModelWeights(cfg, state, ObjectiveConfig(name="wav2vec2", wav2vec2=w2v2), str(path))


def _model_file_or_fairseq(path: Path) -> ModelWeights:
    """An `xlsr import` file, else a fairseq checkpoint (both are ``.pt`` files)."""
    try:
        return read_model_file(path)
    except UnreadableCheckpointError as not_ours:
        try:
            return read_fairseq(path)
        except UnreadableCheckpointError:
            raise not_ours from None


# (what it is, does the path look like it, the reader), tried in order.
READERS: list[tuple[str, Callable[[Path], bool], Callable[[Path], ModelWeights]]] = [
    ("training checkpoint", is_training_checkpoint, read_training_checkpoint),
    ("Hugging Face directory", is_hf_directory, read_hf_directory),
    ("model file", is_model_file, _model_file_or_fairseq),
]


def read_weights(path: str | Path) -> ModelWeights:
    """The weights at ``path`` in any supported format, on the CPU."""
    path = Path(path)
    for _, claims, read in READERS:
        if claims(path):
            return read(path)
    if path.exists():
        raise UnreadableCheckpointError(
            f"{path}: a directory that is neither a training checkpoint (trainer.pt) nor an HF model "
            "(config.json)"
        )
    raise FileNotFoundError(
        f"{path}: expected a training checkpoint (step-N/), an xlsr model file, or an HF model directory"
    )


def load_pretrained(path: str | Path, device: str = "cpu"):
    """The model (its objective's, with its weights) in eval mode, from any supported format."""
    return read_weights(path).build().to(device).eval()


__all__ = [
    "ENCODER_PREFIXES",
    "READERS",
    "ModelWeights",
    "UnreadableCheckpointError",
    "load_model_state",
    "load_pretrained",
    "read_fairseq",
    "read_weights",
]
