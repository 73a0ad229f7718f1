"""The numerics that "exact to fairseq" rests on: LR schedules, Adam and its ε placement, skipped
updates, collapse alarms.

The references below are written from the fairseq sources, independently of `xlsr.engine.optim`:
- facebookresearch/fairseq `fairseq/optim/lr_scheduler/polynomial_decay_schedule.py` (`step_update`),
- facebookresearch/fairseq `fairseq/optim/lr_scheduler/tri_stage_lr_scheduler.py` (`_decide_stage`,
  `step_update`; the stage lengths from `phase_ratio` as `int(max_update * ratio)`),
- facebookresearch/fairseq `fairseq/optim/adam.py` (`Adam.step`),
- facebookresearch/fairseq `fairseq/trainer.py`: `_build_optimizer` calls `step_update(0)` right after
  building the scheduler and `set_num_updates(n)` calls `step_update(n)` after update n, so update n + 1
  runs at the LR of `step_update(n)`. xlsr steps its scheduler once after each optimizer step, so update
  n + 1 runs at the LR set after n scheduler steps: the two counts line up.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from xlsr.config import OptimConfig, TrainConfig
from xlsr.engine.optim import Adam, build_optimizer, build_scheduler, reapply_schedule
from xlsr.objectives.wav2vec2 import Wav2Vec2Objective

# --------------------------------------------------------------------------------------------------
# LR schedules


def fairseq_polynomial(num_updates: int, cfg: OptimConfig) -> float:
    """PolynomialDecayLRSchedule.step_update(num_updates), with total_num_update = max_update."""
    warmup, total, lr, end = cfg.warmup_updates, cfg.max_update, cfg.lr, cfg.end_lr
    if warmup > 0 and num_updates <= warmup:
        return num_updates / float(warmup) * lr
    if num_updates >= total:
        return end
    pct_remaining = 1 - (num_updates - warmup) / (total - warmup)
    return (lr - end) * pct_remaining**cfg.power + end


def fairseq_tri_stage(num_updates: int, cfg: OptimConfig) -> float:
    """TriStageLRSchedule.step_update(num_updates) with phase_ratio = cfg.tri_stage_ratios."""
    warmup, hold, decay = (int(cfg.max_update * ratio) for ratio in cfg.tri_stage_ratios)
    peak = cfg.lr
    init, final = cfg.tri_stage_init_scale * peak, cfg.tri_stage_final_scale * peak
    warmup_rate = (peak - init) / warmup if warmup != 0 else 0
    decay_factor = -math.log(cfg.tri_stage_final_scale) / decay
    if num_updates < warmup:
        return init + warmup_rate * num_updates
    if num_updates < warmup + hold:
        return peak
    if num_updates <= warmup + hold + decay:  # fairseq's decay stage includes its last step
        return peak * math.exp(-decay_factor * (num_updates - warmup - hold))
    return final


def fairseq_lr(num_updates: int, cfg: OptimConfig) -> float:
    return (fairseq_tri_stage if cfg.schedule == "tri_stage" else fairseq_polynomial)(num_updates, cfg)


def xlsr_lrs(cfg: OptimConfig, updates: int) -> list[float]:
    """The LR each of updates 1..updates runs at, stepped as the torch backend does: the optimizer's
    step, then the scheduler's."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], cfg)
    scheduler = build_scheduler(optimizer, cfg)
    lrs = []
    for _ in range(updates):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient: moves nothing
        scheduler.step()
    return lrs


def xlsr_lr_after(cfg: OptimConfig, num_updates: int) -> float:
    """The LR xlsr sets for the update that follows ``num_updates`` completed ones, without walking
    there (LambdaLR evaluates its factor at ``last_epoch``)."""
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    scheduler = build_scheduler(optimizer, cfg)
    if num_updates:
        optimizer.step()  # LambdaLR warns about a scheduler step before any optimizer step
        scheduler.last_epoch = num_updates - 1
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


def assert_lr(got: float, want: float, num_updates: int) -> None:
    # Only the order of the floating-point operations differs (xlsr multiplies lr by a factor).
    assert got == pytest.approx(want, rel=1e-12, abs=0), (num_updates, got, want)


# The wav2vec 2.0 / XLS-R pretraining recipe: warm up for 32k updates, then linear to 0 at 400k.
BASE = OptimConfig(lr=5e-4, warmup_updates=32_000, max_update=400_000, end_lr=0.0, power=1.0)
SMALL_POLYNOMIAL = {
    "linear": dict(warmup_updates=8, max_update=40),
    "no-warmup": dict(warmup_updates=0, max_update=30),
    "end-lr-power-2": dict(warmup_updates=8, max_update=40, end_lr=1e-5, power=2.0),
    "end-lr-power-0.5": dict(warmup_updates=5, max_update=23, end_lr=2e-5, power=0.5),
}
SMALL_TRI_STAGE = {
    "ratios-0.1-0.4-0.5": dict(max_update=100),
    "truncated-stages": dict(max_update=333),  # stages 33 + 133 + 166 = 332 < 333
    "no-warmup": dict(max_update=60, tri_stage_ratios=(0.0, 0.5, 0.5)),
    "scales": dict(max_update=50, tri_stage_init_scale=0.2, tri_stage_final_scale=0.5),
}


@pytest.mark.parametrize("overrides", SMALL_POLYNOMIAL.values(), ids=SMALL_POLYNOMIAL.keys())
def test_polynomial_schedule_matches_fairseq_at_every_update(overrides):
    cfg = dataclasses.replace(BASE, schedule="polynomial", **overrides)
    lrs = xlsr_lrs(cfg, cfg.max_update + 5)
    # Update n + 1 runs at fairseq's step_update(n).
    for done in range(len(lrs)):
        assert_lr(lrs[done], fairseq_lr(done, cfg), done)
    assert lrs[cfg.warmup_updates] == cfg.lr  # the peak, exactly
    assert lrs[cfg.max_update :] == [cfg.end_lr] * 5  # constant from max_update on


@pytest.mark.parametrize("overrides", SMALL_TRI_STAGE.values(), ids=SMALL_TRI_STAGE.keys())
def test_tri_stage_schedule_matches_fairseq_at_every_update(overrides):
    cfg = dataclasses.replace(BASE, schedule="tri_stage", **overrides)
    lrs = xlsr_lrs(cfg, cfg.max_update + 5)
    for done, lr in enumerate(lrs):
        assert_lr(lr, fairseq_lr(done, cfg), done)
    init_scale = cfg.tri_stage_init_scale if cfg.tri_stage_ratios[0] > 0 else 1.0
    assert lrs[0] == pytest.approx(init_scale * cfg.lr, rel=1e-12)
    assert lrs[-1] == pytest.approx(cfg.tri_stage_final_scale * cfg.lr, rel=1e-12)


def _edges(cfg: OptimConfig) -> list[int]:
    warmup, total = cfg.warmup_updates, cfg.max_update
    edges = [1, 2, warmup - 1, warmup, warmup + 1, (warmup + total) // 2]
    return [*edges, total - 1, total, total + 1, 2 * total]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"end_lr": 1e-6, "power": 2.0}, {"warmup_updates": 0}, {"lr": 1e-3, "max_update": 250_000}],
    ids=["recipe", "end-lr-power-2", "no-warmup", "lr-1e-3-250k"],
)
def test_polynomial_schedule_matches_fairseq_at_recipe_scale(overrides):
    cfg = dataclasses.replace(BASE, **overrides)
    for done in sorted({n for n in _edges(cfg) if n >= 1}):
        assert_lr(xlsr_lr_after(cfg, done), fairseq_lr(done, cfg), done)
    assert xlsr_lr_after(cfg, cfg.max_update) == cfg.end_lr


def test_tri_stage_schedule_matches_fairseq_at_recipe_scale():
    cfg = dataclasses.replace(BASE, schedule="tri_stage", max_update=20_000)
    warmup, hold, decay = 2_000, 8_000, 10_000
    points = [0, 1, warmup - 1, warmup, warmup + hold - 1, warmup + hold, warmup + hold + decay // 2]
    points += [warmup + hold + decay - 1, warmup + hold + decay, warmup + hold + decay + 1, 40_000]
    for done in points:
        assert_lr(xlsr_lr_after(cfg, done), fairseq_lr(done, cfg), done)


def test_lr_jump_agrees_with_walking_the_scheduler():
    cfg = dataclasses.replace(BASE, **SMALL_POLYNOMIAL["end-lr-power-2"])
    walked = xlsr_lrs(cfg, cfg.max_update + 2)
    assert [xlsr_lr_after(cfg, n) for n in range(len(walked))] == walked


def test_a_schedule_multiplier_takes_effect_at_once_when_reapplied():
    """The health sentinel's LR damping after a rollback: the schedule times a multiplier, applied to
    the very next update by ``reapply_schedule`` (LambdaLR itself would apply it one update late)."""
    cfg = dataclasses.replace(BASE, **SMALL_POLYNOMIAL["linear"])
    damping = {"until": 0}
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    scheduler = build_scheduler(optimizer, cfg, lambda n: 0.5 if n < damping["until"] else 1.0)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    undamped = optimizer.param_groups[0]["lr"]
    assert undamped == pytest.approx(xlsr_lr_after(cfg, 5), rel=1e-12)
    damping["until"] = 7
    reapply_schedule(scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * undamped, rel=1e-12)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(xlsr_lr_after(cfg, 7), rel=1e-12)


def test_first_warmup_update_matches_fairseq():
    """fairseq's trainer calls step_update(0) right after building the scheduler, which replaces the
    constructor's lr/W by 0·lr: the first update runs at lr 0 (only Adam's moments move)."""
    cfg = dataclasses.replace(BASE, **SMALL_POLYNOMIAL["linear"])
    assert xlsr_lrs(cfg, 1)[0] == fairseq_polynomial(0, cfg) == 0.0


# --------------------------------------------------------------------------------------------------
# Adam

LR, BETAS, EPS, STEPS = 5e-4, (0.9, 0.98), 1e-6, 20
GRAD = 1e-3  # a typical gradient element in wav2vec 2.0 pretraining
ULPS = STEPS * torch.finfo(torch.float32).eps


def tight(increment: float = LR) -> dict[str, float]:
    """Each step rounds an element a few times, at the size it has then: within one ulp per step of
    its final size plus the distance its increments (lr for a weight, |g| for a moment) moved it."""
    return dict(rtol=ULPS, atol=ULPS * STEPS * increment)


def random_problem(
    seed: int = 0, grad_scale: float = GRAD, dead_rows: int = 4
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Parameters and STEPS gradients per parameter; the first parameter's first ``dead_rows`` rows get
    no gradient (an unused codebook entry), so only weight decay moves them."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(16, 8), (8,), (3, 4, 5)]
    params = [torch.randn(shape, generator=gen) for shape in shapes]
    grads = []
    for _ in range(STEPS):
        step = [torch.randn(shape, generator=gen) * grad_scale for shape in shapes]
        step[0][:dead_rows] = 0.0
        grads.append(step)
    return params, grads


def fairseq_adam(
    params: list[torch.Tensor],
    grads: list[list[torch.Tensor]],
    lr: float,
    betas,
    eps: float,
    weight_decay: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """fairseq/optim/adam.py Adam.step on fp32 parameters: (params, exp_avg, exp_avg_sq) after all steps."""
    beta1, beta2 = betas
    params = [p.clone() for p in params]
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    for step, step_grads in enumerate(grads, start=1):
        for p, g, m, v in zip(params, step_grads, exp_avg, exp_avg_sq, strict=True):
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = v.sqrt().add_(eps)  # ε added to √v itself, before bias correction
            step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
            if weight_decay != 0:
                p.add_(p, alpha=-weight_decay * lr)  # decoupled, on every parameter
            p.addcdiv_(m, denom, value=-step_size)
    return params, exp_avg, exp_avg_sq


def run(optimizer_cls, params: list[torch.Tensor], grads: list[list[torch.Tensor]], **kwargs):
    """(parameters, optimizer) after feeding ``grads`` to ``optimizer_cls``; ``eps_at`` (a function of
    the step) changes ε before each step."""
    eps_at = kwargs.pop("eps_at", None)
    live = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = optimizer_cls(live, **kwargs)
    for step, step_grads in enumerate(grads, start=1):
        if eps_at is not None:
            optimizer.param_groups[0]["eps"] = eps_at(step)
        for p, g in zip(live, step_grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
    return live, optimizer


def moments(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    return [optimizer.state[p][key] for p in params]


def assert_all_close(actual: list[torch.Tensor], expected: list[torch.Tensor], increment: float = LR) -> None:
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.detach(), e, **tight(increment))


def fairseq_cfg(**overrides) -> OptimConfig:
    return dataclasses.replace(BASE, betas=BETAS, eps=EPS, **overrides)


# (lr, weight decay): the recipe's, and a strong decay (2% in 20 steps) that shows a 1% error in it.
DECAYS = {"no-decay": (LR, 0.0), "recipe": (LR, 0.01), "strong-decay": (1e-2, 0.1)}


@pytest.mark.parametrize(("lr", "weight_decay"), DECAYS.values(), ids=DECAYS.keys())
def test_fairseq_adam_matches_fairseq_reference(lr, weight_decay):
    params, grads = random_problem()
    cfg = fairseq_cfg(optimizer="adam", weight_decay=weight_decay, lr=lr)
    live, optimizer = run(lambda ps: build_optimizer(ps, cfg), params, grads)
    want, exp_avg, exp_avg_sq = fairseq_adam(params, grads, lr, BETAS, EPS, weight_decay)
    assert_all_close(live, want, lr)
    assert_all_close(moments(optimizer, live, "exp_avg"), exp_avg, GRAD)
    assert_all_close(moments(optimizer, live, "exp_avg_sq"), exp_avg_sq, GRAD**2)
    assert all(optimizer.state[p]["step"] == STEPS for p in live)
    # the rows without gradient moved by weight decay alone
    decayed = params[0][:4] * (1 - lr * weight_decay) ** STEPS
    torch.testing.assert_close(live[0][:4].detach(), decayed, **tight(lr))


@pytest.mark.parametrize(("lr", "weight_decay"), DECAYS.values(), ids=DECAYS.keys())
def test_adamw_option_matches_torch_adamw(lr, weight_decay):
    params, grads = random_problem()
    cfg = fairseq_cfg(optimizer="adamw", weight_decay=weight_decay, lr=lr)
    live, optimizer = run(lambda ps: build_optimizer(ps, cfg), params, grads)
    kwargs = dict(lr=lr, betas=BETAS, eps=EPS, weight_decay=weight_decay, foreach=False)
    torch_live, torch_optimizer = run(torch.optim.AdamW, params, grads, **kwargs)
    assert_all_close(live, [p.detach() for p in torch_live], lr)
    for key, increment in (("exp_avg", GRAD), ("exp_avg_sq", GRAD**2)):
        assert_all_close(moments(optimizer, live, key), moments(torch_optimizer, torch_live, key), increment)


def test_fairseq_eps_is_torch_eps_divided_by_root_of_bias_correction():
    """fairseq: lr·√bc2/bc1 · m/(√v + ε) = lr/bc1 · m/(√v/√bc2 + ε/√bc2), torch's AdamW with ε/√bc2."""
    params, grads = random_problem()
    weight_decay = 0.01
    ours, _ = run(
        Adam, params, grads, lr=LR, betas=BETAS, eps=EPS, weight_decay=weight_decay, fairseq_eps=True
    )
    theirs, _ = run(
        torch.optim.AdamW, params, grads, lr=LR, betas=BETAS, weight_decay=weight_decay, foreach=False,
        eps_at=lambda step: EPS / math.sqrt(1 - BETAS[1] ** step),
    )  # fmt: skip
    assert_all_close(ours, [p.detach() for p in theirs])


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_without_eps_fairseq_adam_is_torch_adamw(weight_decay):
    params, grads = random_problem(dead_rows=0)  # 0/0 without ε
    kwargs = dict(lr=LR, betas=BETAS, eps=0.0, weight_decay=weight_decay)
    ours, _ = run(Adam, params, grads, fairseq_eps=True, **kwargs)
    theirs, _ = run(torch.optim.AdamW, params, grads, foreach=False, **kwargs)
    assert_all_close(ours, [p.detach() for p in theirs])


def test_eps_placement_in_closed_form():
    """With a constant gradient g, m̂ = g and v̂ = g² at every step t: torch's AdamW moves by
    lr·g/(|g| + ε) and fairseq by lr·g/(|g| + ε/√(1 − β2^t)), about 7ε at t = 1 for β2 = 0.98 and ε
    again once β2^t is small."""
    gen = torch.Generator().manual_seed(1)
    g = (
        torch.logspace(-8, -1, 64, dtype=torch.float64)
        * torch.randn(64, generator=gen, dtype=torch.float64).sign()
    )
    for fairseq_eps in (True, False):
        param = torch.nn.Parameter(torch.zeros(64))
        optimizer = Adam([param], lr=LR, betas=BETAS, eps=EPS, fairseq_eps=fairseq_eps)
        for step in range(1, 301):
            with torch.no_grad():
                param.zero_()  # so that the parameter is the update itself
            param.grad = g.float()
            optimizer.step()
            eps = EPS / math.sqrt(1 - BETAS[1] ** step) if fairseq_eps else EPS
            want = -LR * g / (g.abs() + eps)
            torch.testing.assert_close(param.detach().double(), want, rtol=1e-5, atol=0, msg=f"step {step}")


def test_eps_placement_is_visible_at_the_tight_tolerance():
    """At typical gradient sizes (1e-3) the two placements part far beyond the tolerance used above."""
    params, grads = random_problem()
    ours, _ = run(Adam, params, grads, lr=LR, betas=BETAS, eps=EPS, fairseq_eps=True)
    theirs, _ = run(Adam, params, grads, lr=LR, betas=BETAS, eps=EPS, fairseq_eps=False)
    gap = max((a - b).abs().max().item() for a, b in zip(ours, theirs, strict=True))
    assert gap > 10 * ULPS * max(p.abs().max().item() for p in params)


# --------------------------------------------------------------------------------------------------
# Skipped updates

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


def snapshot(optimizer: Adam, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Parameters, both moments and the step count (zeros before the first update)."""
    tensors = [p.detach().clone() for p in params]
    for p in params:
        state = optimizer.state[p]
        zeros = torch.zeros_like(p.detach())
        tensors += [state.get("exp_avg", zeros).clone(), state.get("exp_avg_sq", zeros).clone()]
        tensors.append(state.get("step", torch.zeros((), device=p.device)).clone())
    return tensors


def found_inf(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The skip flag as the torch backend computes it: a 0-dim bool on the device, never read back."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    return ~torch.isfinite(norm)


def take_step(optimizer: Adam, params: list[torch.nn.Parameter], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.to(p.device)
    optimizer.step(skip=found_inf(params))


def poisoned(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    bad = [g.clone() for g in grads]
    bad[0][0, 0], bad[1][0] = float("nan"), float("inf")
    return bad


def optimizer_pair(device: str, fairseq_eps: bool) -> tuple[tuple, tuple, list[list[torch.Tensor]]]:
    params, grads = random_problem(grad_scale=1.0)
    pair = []
    for _ in range(2):
        live = [torch.nn.Parameter(p.to(device)) for p in params]
        pair.append(
            (Adam(live, lr=LR, betas=BETAS, eps=EPS, weight_decay=0.01, fairseq_eps=fairseq_eps), live)
        )
    return pair[0], pair[1], grads


def assert_identical(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert all(torch.equal(a, e) for a, e in zip(actual, expected, strict=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fairseq_eps", [True, False], ids=["fairseq-eps", "torch-eps"])
@pytest.mark.parametrize("skip_at", [0, 3], ids=["first-update", "fourth-update"])
def test_skipped_update_changes_nothing_and_is_forgotten(device, fairseq_eps, skip_at):
    (skipping, ours), (clean, theirs), grads = optimizer_pair(device, fairseq_eps)
    for step_grads in grads[:skip_at]:
        take_step(skipping, ours, step_grads)
    before = snapshot(skipping, ours)
    take_step(skipping, ours, poisoned(grads[skip_at]))
    assert_identical(snapshot(skipping, ours), before)  # parameters, both moments and the step count
    for step_grads in grads:
        take_step(clean, theirs, step_grads)
    for step_grads in grads[skip_at:]:
        take_step(skipping, ours, step_grads)
    assert_identical(snapshot(skipping, ours), snapshot(clean, theirs))  # as if it never happened


@pytest.mark.parametrize("device", DEVICES)
def test_a_false_skip_flag_is_a_plain_step(device):
    (flagged, ours), (plain, theirs), grads = optimizer_pair(device, fairseq_eps=True)
    for step_grads in grads[:5]:
        take_step(flagged, ours, step_grads)
        for p, g in zip(theirs, step_grads, strict=True):
            p.grad = g.to(device)
        plain.step()
    assert_identical(snapshot(flagged, ours), snapshot(plain, theirs))


def test_pending_skip_is_used_once():
    """DeepSpeed calls step() itself: the backend leaves the flag in ``pending_skip``."""
    (optimizer, live), _, grads = optimizer_pair("cpu", fairseq_eps=True)
    take_step(optimizer, live, grads[0])
    before = snapshot(optimizer, live)
    for p, g in zip(live, poisoned(grads[1]), strict=True):
        p.grad = g
    optimizer.pending_skip = torch.tensor(True)
    optimizer.step()
    assert_identical(snapshot(optimizer, live), before)
    assert optimizer.pending_skip is None
    for p, g in zip(live, grads[1], strict=True):
        p.grad = g
    optimizer.step()
    assert optimizer.state[live[0]]["step"] == 2


# --------------------------------------------------------------------------------------------------
# Collapse alarms

K, CODES = 100, 640  # the recipe's negatives; 2 groups x 320 codes
WAV2VEC2 = Wav2Vec2Objective(TrainConfig())  # BASE: K = 100 negatives, 2 x 320 codes
UNIFORM = math.log2(K + 1)  # bits of cross-entropy when the K + 1 logits are equal
HEALTHY = {"loss_contrastive": 4.2, "code_perplexity": 300.0, "accuracy": 0.45, "diversity": 0.3}


def alarms(past_warmup: bool = True, **changes: float) -> list[tuple[str, str]]:
    """(health signal, message) of each alarm."""
    return [(a.signal, a.message) for a in WAV2VEC2.alarms({**HEALTHY, **changes}, past_warmup=past_warmup)]


def test_a_healthy_run_raises_no_alarm():
    assert alarms() == []
    assert alarms(past_warmup=False) == []
    assert WAV2VEC2.alarms({}, past_warmup=True) == []


@pytest.mark.parametrize("offset", [0.0, 0.009, -0.009])
def test_uniform_logits_alarm_past_warmup_only(offset):
    raised = alarms(loss_contrastive=UNIFORM + offset)
    assert len(raised) == 1 and raised[0][0] == "at_chance" and "uniform" in raised[0][1]
    assert alarms(past_warmup=False, loss_contrastive=UNIFORM + offset) == []  # normal at the start


@pytest.mark.parametrize("offset", [0.011, -0.011, -1.0])
def test_uniform_alarm_quiet_away_from_log2_k_plus_1(offset):
    assert alarms(loss_contrastive=UNIFORM + offset) == []


def test_codebook_collapse_alarm_needs_low_perplexity_and_perfect_accuracy():
    collapsed = dict(code_perplexity=0.05 * CODES - 1, accuracy=0.995)
    raised = alarms(**collapsed)
    assert len(raised) == 1 and raised[0][0] == "codebook" and "codebook collapse" in raised[0][1]
    assert alarms(**{**collapsed, "accuracy": 0.45}) == []  # few codes in use, task still hard: early run
    assert alarms(**{**collapsed, "code_perplexity": 0.05 * CODES}) == []  # 5% of the codes is enough
    assert alarms(**{**collapsed, "accuracy": 0.99}) == []


def test_diversity_alarm_near_one():
    raised = alarms(diversity=0.96)
    assert len(raised) == 1 and raised[0][0] == "codebook" and "diversity" in raised[0][1]
    assert alarms(diversity=0.95) == []
