"""Optimizer and learning-rate schedules (fairseq ``fairseq/optim/adam.py``, ``fairseq/optim/lr_scheduler/``).

`Adam` implements both fairseq's Adam (eps added to sqrt(v) before bias correction, decoupled weight
decay on every parameter) and torch's AdamW semantics, and can *skip* an update without a host sync:
``step(skip=tensor)`` leaves parameters and moments untouched where ``skip`` is true, so a non-finite
gradient never costs a device→host round trip in the hot loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from xlsr.config import OptimConfig


class Adam(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        fairseq_eps: bool = True,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fairseq_eps=fairseq_eps)
        super().__init__(params, defaults)
        # Set by a caller that cannot pass ``skip`` (DeepSpeed calls ``step()`` itself).
        self.pending_skip: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure=None, skip: torch.Tensor | None = None):  # type: ignore[override]
        skip, self.pending_skip = (skip if skip is not None else self.pending_skip), None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(group, params, skip)

    def _update_group(self, group: dict, params: list[torch.Tensor], skip: torch.Tensor | None) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # keep = 1 for a real update, 0 for a skipped one (all arithmetic stays on the device).
        keep = (
            torch.ones((), device=params[0].device)
            if skip is None
            else (~skip).to(device=params[0].device, dtype=torch.float32)
        )
        for p in params:
            state = self.state[p]
            grad = p.grad if skip is None else torch.where(skip.to(p.device), 0.0, p.grad)
            state["step"].add_(keep)
            step = state["step"].clamp(min=1.0)
            bias1, bias2 = 1 - beta1**step, 1 - beta2**step
            if wd != 0:
                p.mul_(1 - lr * wd * keep)
            state["exp_avg"].lerp_(grad, (1 - beta1) * keep)
            state["exp_avg_sq"].mul_(1 - (1 - beta2) * keep).addcmul_(grad, grad, value=1 - beta2)
            denom = state["exp_avg_sq"].sqrt()
            if group["fairseq_eps"]:
                denom.add_(eps)
                step_size = lr * bias2.sqrt() / bias1
            else:
                denom.div_(bias2.sqrt()).add_(eps)
                step_size = lr / bias1
            p.sub_(state["exp_avg"] / denom * (step_size * keep))


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> Adam:
    return Adam(
        params,
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fairseq_eps=cfg.optimizer == "adam",
    )


def lr_factor(num_updates: int, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` for the update that follows ``num_updates`` completed ones."""
    if cfg.schedule == "tri_stage":
        return _tri_stage(num_updates, cfg)
    warmup, total = cfg.warmup_updates, cfg.max_update
    if warmup > 0 and num_updates <= warmup:
        # fairseq polynomial_decay: lr·n/W after n updates. The scheduler's constructor sets lr/W, but
        # fairseq's trainer calls step_update(0) right after building it, so update 1 runs at lr 0.
        return num_updates / warmup
    if num_updates >= total:
        return cfg.end_lr / cfg.lr
    remaining = 1 - (num_updates - warmup) / (total - warmup)
    return ((cfg.lr - cfg.end_lr) * remaining**cfg.power + cfg.end_lr) / cfg.lr


def _tri_stage(num_updates: int, cfg: OptimConfig) -> float:
    """fairseq tri_stage: linear warmup from init scale, hold, exponential decay to the final scale."""
    warmup, hold, decay = (int(r * cfg.max_update) for r in cfg.tri_stage_ratios)
    if num_updates < warmup:
        return cfg.tri_stage_init_scale + (1 - cfg.tri_stage_init_scale) * num_updates / warmup
    if num_updates < warmup + hold:
        return 1.0
    if num_updates < warmup + hold + decay:
        rate = -math.log(cfg.tri_stage_final_scale) / decay
        return math.exp(-rate * (num_updates - warmup - hold))
    return cfg.tri_stage_final_scale


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: lr_factor(n, cfg))
