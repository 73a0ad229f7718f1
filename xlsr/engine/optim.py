"""Optimizer and learning-rate schedules (fairseq ``fairseq/optim/adam.py``, ``fairseq/optim/lr_scheduler/``).

`Adam` implements both fairseq's Adam (eps added to sqrt(v) before bias correction, decoupled weight
decay on every parameter) and torch's AdamW semantics, and can *skip* an update without a host sync:
``step(skip=tensor)`` leaves parameters and moments untouched where ``skip`` is true, so a non-finite
gradient never costs a device→host round trip in the hot loop.

The update is multi-tensor (``torch._foreach_*``): a few kernels per bucket of parameters instead of a
dozen per parameter, which keeps the host's share of an update small (docs/performance.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from xlsr.config import OptimConfig

# Integer dtypes of the same width, to zero a float tensor bit for bit (NaN and inf included).
_SAME_WIDTH_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}
# Elements per batch of temporaries (√v): bounds the step's extra memory at 512 MB of fp32.
_CHUNK_ELEMENTS = 1 << 27


def _local(tensor: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise: the update is elementwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


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
        self.pending_skip: Tensor | None = None
        # Host-side record of which parameters' step counters are equal: parameters with the same key
        # share one bias correction, so a bucket of them is updated by foreach kernels with 0-dim
        # tensor scalars. The counters themselves live on the device (a skip is decided there).
        self._step_keys: dict[Tensor, int] = {}
        self._last_key = 0

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._step_keys.clear()  # loaded counters: read back once, at the next step

    @torch.no_grad()
    def step(self, closure=None, skip: Tensor | None = None):  # type: ignore[override]
        skip, self.pending_skip = (skip if skip is not None else self.pending_skip), None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._init_state(params)
                for bucket in self._buckets(params):
                    self._update_bucket(group, bucket, skip)

    def _init_state(self, params: list[Tensor]) -> None:
        unknown = []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                self._step_keys[p] = 0  # key 0: a counter at zero
            elif p not in self._step_keys:
                unknown.append(p)
        if unknown:
            self._read_step_keys(unknown)

    def _read_step_keys(self, params: list[Tensor]) -> None:
        """Key loaded counters by their values: one device→host read after a resume, never again."""
        for p in params:
            if self.state[p]["step"].device != p.device:  # torch's loader keeps "step" where it was
                self.state[p]["step"] = self.state[p]["step"].to(p.device, torch.float32)
        values = torch.stack([self.state[p]["step"] for p in params]).tolist()
        keys: dict[float, int] = {0.0: 0}
        for p, value in zip(params, values, strict=True):
            if value not in keys:
                self._last_key += 1
                keys[value] = self._last_key
            self._step_keys[p] = keys[value]

    def _buckets(self, params: list[Tensor]) -> list[list[Tensor]]:
        """Parameters with equal step counters, device and dtype; advances the keys of this step's."""
        buckets: dict[tuple, list[Tensor]] = {}
        advanced: dict[int, int] = {}
        for p in params:
            key = self._step_keys[p]
            buckets.setdefault((key, p.device, p.dtype, p.grad.dtype), []).append(p)
            if key not in advanced:
                self._last_key += 1
                advanced[key] = self._last_key
            self._step_keys[p] = advanced[key]  # counters of parameters without a gradient stay
        return list(buckets.values())

    def _update_bucket(self, group: dict, params: list[Tensor], skip: Tensor | None) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        states = [self.state[p] for p in params]
        weights, grads = [_local(p) for p in params], [_local(p.grad) for p in params]
        exp_avgs = [_local(s["exp_avg"]) for s in states]
        exp_avg_sqs = [_local(s["exp_avg_sq"]) for s in states]
        device = weights[0].device
        # keep = 1 for a real update, 0 for a skipped one (all arithmetic stays on the device).
        if skip is None:
            keep = torch.ones((), device=device)
        else:
            keep = (~skip).to(device=device, dtype=torch.float32)
            _zero_if_skipped(grads, skip)
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, [keep] * len(steps))  # the list form: the scalar form reads keep back
        step = states[0]["step"].clamp(min=1.0)  # the bucket's counters are equal
        bias1, bias2 = 1 - beta1**step, 1 - beta2**step
        if wd != 0:
            torch._foreach_mul_(weights, 1 - lr * wd * keep)
        # m ← β1·m + (1 − β1)·g and v ← β2·v + (1 − β2)·g² (a skipped update: g = 0 and factor 1).
        torch._foreach_mul_(exp_avgs, 1 - (1 - beta1) * keep)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, 1 - (1 - beta2) * keep)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        if group["fairseq_eps"]:
            step_size, root_bias2 = lr * bias2.sqrt() / bias1, None
        else:
            step_size, root_bias2 = lr / bias1, bias2.sqrt()
        step_size = step_size * keep
        for start, stop in _chunks(weights):
            denom = torch._foreach_sqrt(exp_avg_sqs[start:stop])
            if root_bias2 is not None:
                torch._foreach_div_(denom, root_bias2)
            torch._foreach_add_(denom, eps)
            # p − m / (denom / s) = p − s·m / denom; s = 0 on a skipped update: m / inf = 0.
            torch._foreach_div_(denom, step_size)
            torch._foreach_addcdiv_(weights[start:stop], exp_avgs[start:stop], denom, value=-1.0)


def _zero_if_skipped(grads: list[Tensor], skip: Tensor) -> None:
    """Zero the gradients in place when ``skip`` is set: an integer multiply of their bits by 0 or 1,
    which clears NaN and inf too (a float multiply by 0 keeps NaN) and needs no host sync."""
    by_width: dict[int, list[Tensor]] = {}
    for g in grads:
        by_width.setdefault(g.element_size(), []).append(g)
    for width, same in by_width.items():
        dtype = _SAME_WIDTH_INT[width]
        keep = (~skip).to(device=same[0].device, dtype=dtype)
        torch._foreach_mul_([g.view(dtype) for g in same], keep)


def _chunks(tensors: list[Tensor]) -> list[tuple[int, int]]:
    """Consecutive index ranges of at most ``_CHUNK_ELEMENTS`` elements (or one tensor)."""
    ranges, start, size = [], 0, 0
    for index, tensor in enumerate(tensors):
        if index > start and size + tensor.numel() > _CHUNK_ELEMENTS:
            ranges.append((start, index))
            start, size = index, 0
        size += tensor.numel()
    ranges.append((start, len(tensors)))
    return ranges


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


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, multiplier: Callable[[int], float] | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of ``cfg``, times ``multiplier(n)`` when given (the health sentinel's LR damping
    after a rollback, `xlsr.engine.health`)."""
    if multiplier is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: lr_factor(n, cfg))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: lr_factor(n, cfg) * multiplier(n))


def reapply_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set the LR of the next update from the schedule now (its multiplier may have changed)."""
    groups = scheduler.optimizer.param_groups
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(scheduler.last_epoch)
