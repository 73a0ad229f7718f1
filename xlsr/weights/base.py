"""What every weights reader returns, and what can be built from it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from xlsr.config import ModelConfig, ObjectiveConfig, TrainConfig
from xlsr.model.encoder import SpeechEncoder
from xlsr.model.interop import UnreadableCheckpointError
from xlsr.objectives import build_objective

# Parameter names of the shared encoder (`SpeechEncoder`); everything else belongs to an objective.
ENCODER_PREFIXES = ("feature_extractor.", "layer_norm.", "post_extract_proj.", "mask_emb", "encoder.")


@dataclass
class ModelWeights:
    """Full (unsharded) CPU weights and the configs that built them."""

    model: ModelConfig  # the encoder architecture (and wav2vec 2.0's quantizer, negatives, masks)
    state: dict[str, torch.Tensor]
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # what trained the weights
    source: str = ""  # the path, for messages

    @property
    def encoder_only(self) -> bool:
        """Only the shared encoder's weights (e.g. a bare HF ``Wav2Vec2Model``): no objective head."""
        return all(key.startswith(ENCODER_PREFIXES) for key in self.state)

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The shared encoder's weights only: what another objective can start from."""
        return {key: value for key, value in self.state.items() if key.startswith(ENCODER_PREFIXES)}

    def build(self, encoder_only: bool = False) -> SpeechEncoder:
        """The objective's model with these weights (a mismatch is one line naming the source).

        ``encoder_only``: only the encoder's weights are needed (and loaded), e.g. for probes and
        features from an encoder-only export; the objective's head keeps its initialisation.
        """
        model = build_objective(TrainConfig(model=self.model, objective=self.objective)).build_model()
        state = self.encoder_state() if encoder_only else self.state
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes that do not fit
            raise UnreadableCheckpointError(
                f"{self.source}: weights do not fit the model config: {exc}"
            ) from None
        missing = [key for key in missing if not encoder_only or key.startswith(ENCODER_PREFIXES)]
        if missing or unexpected:
            raise UnreadableCheckpointError(
                f"{self.source}: weights do not fit the model config (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]})"
            )
        return model
