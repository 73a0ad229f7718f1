"""Every layer's hidden states of a frozen encoder: what the probes read.

Layer 0 is the Transformer's input (the convolutional features after projection and positional
convolution), layer i its i-th block's output: the (L + 1) hidden states SUPERB's probes weigh.
Read through forward hooks on ``SpeechEncoder.blocks``, so any objective's model works unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def layer_states(model: nn.Module, audio: torch.Tensor) -> torch.Tensor:
    """(L + 1, T, D) hidden states of one utterance ``audio`` (S,), float32 on ``audio``'s device."""
    blocks = model.blocks
    states: list[torch.Tensor] = []
    handles = [blocks[0].register_forward_pre_hook(lambda _m, args: states.append(args[0][0].float()))]
    handles += [b.register_forward_hook(lambda _m, _i, out: states.append(out[0].float())) for b in blocks]
    try:
        model.encode(audio.unsqueeze(0))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(states)
