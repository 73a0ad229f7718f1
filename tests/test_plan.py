"""`xlsr plan`: the memory model against measured peaks, the batch model against the real loader,
the figures of the XLS-R recipes, and the launch's memory check."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_helpers import ENV, ROOT

from xlsr.cli import main as xlsr_main
from xlsr.config import SAMPLE_RATE, load_config
from xlsr.data.loader import DataStream
from xlsr.engine.distributed import free_port
from xlsr.objectives import build_objective
from xlsr.plan import PlanRequest, make_plan
from xlsr.plan.build import plan_of_run
from xlsr.plan.data import plan_data, read_train_shards
from xlsr.plan.memory import ParameterCounts, Ranks, estimate_memory, full_crops, with_overrides

RECIPES = {"xlsr_300m": 317.4e6, "xlsr_1b": 965.5e6, "xlsr_2b": 2162.9e6}


def plan_json(capsys, *args: str) -> dict:
    assert xlsr_main(["plan", *args, "--json", "--decode-seconds", "0.5"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("recipe", RECIPES)
def test_plan_of_the_xlsr_recipes(recipe, demo_index, capsys):
    config = f"configs/{recipe}.yaml"
    plan = plan_json(
        capsys, "--config", config, "--gpus", "64", "--gpu", "h100", f"data.train=[{demo_index}]"
    )
    assert plan["parameters"] / 1e6 == pytest.approx(RECIPES[recipe] / 1e6, abs=0.05)
    objective = build_objective(load_config(config, []))
    crop = plan["config"]["max_sample_size"]
    assert plan["flops_per_audio_second"] == pytest.approx(
        objective.flops_per_crop(crop) / (crop / SAMPLE_RATE)
    )
    assert 0 < plan["memory_per_gpu_gib"] < plan["gpu_memory_gib"] and plan["fits"]
    assert plan["largest_micro_batch_crops"] >= plan["micro_batch_crops"]
    # time: FLOPs per update over the cluster's FLOP/s at the stated MFU; whole run and GPU-hours
    time_per_update = plan["flops_per_update"] / (64 * 989.4e12 * plan["mfu"])
    assert plan["time_per_update_seconds"] == pytest.approx(time_per_update)
    assert plan["training_hours"] == pytest.approx(plan["updates"] * time_per_update / 3600)
    assert plan["gpu_hours"] == pytest.approx(64 * plan["wall_clock_hours"])
    assert plan["audio_hours_per_update"] <= plan["effective_batch_upper_bound_hours"]
    # data: every language, its passes = hours drawn / hours the model can see
    languages = {row["language"]: row for row in plan["languages"]}
    assert set(languages) == {"en", "de", "sw", "yo", "eu", "mt"}
    total_seen = plan["audio_hours_per_update"] * plan["updates"]
    for row in languages.values():
        assert row["hours_seen"] == pytest.approx(row["sampled_share"] * total_seen)
        assert row["passes"] == pytest.approx(row["hours_seen"] / row["visible_hours"])
        assert row["over_max_passes"] == (row["passes"] > plan["max_passes"])
    assert languages["mt"]["passes"] > languages["en"]["passes"]  # upsampled: the smallest repeats most
    assert plan["loader_cores_per_gpu"] > 0 and plan["decode_source"].startswith("measured on")
    assert plan["checkpoint_size_gib"] == pytest.approx(12 * plan["parameters"] / 2**30)


def test_plan_without_data_by_hand(capsys):
    """0.3B on 128 H100s at 35 %, every utterance a full 20 s crop: 1.9M tokens hold 5 crops per GPU."""
    plan = plan_json(capsys, "--config", "configs/xlsr_300m.yaml", "--gpus", "128", "--gpu", "h100")
    crops = 5 * 128  # update_freq 1: batch_tokens 243.2M = 128 × 1.9M
    assert plan["config"]["update_freq"] == 1 and plan["audio_hours_per_update"] == pytest.approx(
        crops * 20 / 3600
    )
    flops = crops * build_objective(load_config("configs/xlsr_300m.yaml", [])).flops_per_crop(320_000)
    assert plan["time_per_update_seconds"] == pytest.approx(flops / (128 * 989.4e12 * 0.35))
    assert plan["checkpoints"] == 40 and plan["effective_batch_upper_bound_hours"] == pytest.approx(
        243.2e6 / 16e3 / 3600
    )


def test_plan_text_names_its_assumptions(capsys):
    assert xlsr_main(["plan", "--config", "configs/xlsr_1b.yaml", "--gpus", "128", "--mfu", "0.4"]) == 0
    text = capsys.readouterr().out
    assert "965.5M parameters" in text and "fits" in text and "GPU-hours" in text
    assert "GPU: h100 (default; pass --gpu or set launcher.gpu)" in text and "MFU 40%: given (--mfu)" in text
    assert "no data.train given" in text


def test_measured_mfu_from_a_gpu_check_report(tmp_path, capsys):
    report = {
        "dry_run": False,
        "parts": {
            "training": {
                "rows": [
                    {"model": "0.3B", "activation_checkpointing": "none", "mfu": 0.41},
                    {"model": "0.3B", "activation_checkpointing": "layers", "mfu": 0.37},
                    {"model": "1B", "activation_checkpointing": "layers", "mfu": 0.52},
                ]
            }
        },
    }
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(report))
    plan = plan_json(capsys, "--config", "configs/xlsr_300m.yaml", "--gpus", "8", "--measured", str(path))
    assert plan["mfu"] == 0.41 and "training of 0.3B, activation checkpointing none" in plan["mfu_source"]
    layers = "distributed.activation_checkpointing=layers"
    plan = plan_json(
        capsys, "--config", "configs/xlsr_300m.yaml", "--gpus", "8", "--measured", str(path), layers
    )
    assert plan["mfu"] == 0.37  # the row with the same activation checkpointing, not the best one
    plan = plan_json(capsys, "--config", "configs/xlsr_2b.yaml", "--gpus", "8", "--measured", str(path))
    assert plan["mfu"] == 0.52  # the nearest size measured
    path.write_text(json.dumps({**report, "dry_run": True}))
    assert (
        xlsr_main(["plan", "--config", "configs/xlsr_300m.yaml", "--gpus", "8", "--measured", str(path)]) == 2
    )
    assert "--cpu-dry-run" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gpus", "0"], "--gpus must be at least 1"),
        (["--gpus", "12", "--nodes", "5"], "--nodes 5 must divide --gpus 12"),
        (["--gpus", "8", "--mfu", "1.5"], "--mfu must lie in (0, 1]"),
        (["--gpus", "8", "launcher.gpu=h900"], "'launcher.gpu' must be one of"),
        (["--gpus", "8", "data.train=[/nonexistent/index.json]"], "shard index not found"),
        (
            ["--gpus", "8", "DEMO_DATA", "data.min_sample_size=320000"],
            "shorter than data.min_sample_size (20 s)",
        ),
    ],
)
def test_plan_refuses_bad_requests_in_one_line(flags, message, demo_index, capsys):
    flags = [f"data.train=[{demo_index}]" if flag == "DEMO_DATA" else flag for flag in flags]
    assert xlsr_main(["plan", "--config", "configs/xlsr_300m.yaml", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_plan_that_does_not_fit_says_what_would(capsys):
    too_big = ["distributed.activation_checkpointing=none", "data.max_tokens=12800000"]
    plan = plan_json(capsys, "--config", "configs/xlsr_2b.yaml", "--gpus", "16", *too_big)
    assert not plan["fits"] and plan["memory_per_gpu_gib"] > plan["gpu_memory_gib"]
    suggestions = " ".join(plan["suggestions"])
    assert "distributed.activation_checkpointing=layers" in suggestions
    fitting_tokens = plan["largest_micro_batch_crops"] * plan["config"]["max_sample_size"]
    assert f"data.max_tokens={fitting_tokens}" in suggestions
    # the suggested max_tokens fits, and one crop more does not
    config = ["--config", "configs/xlsr_2b.yaml", "--gpus", "16", too_big[0]]
    assert plan_json(capsys, *config, f"data.max_tokens={fitting_tokens}")["fits"]
    one_more = fitting_tokens + plan["config"]["max_sample_size"]
    assert not plan_json(capsys, *config, f"data.max_tokens={one_more}")["fits"]


def test_predicted_micro_batch_matches_the_loader(demo_index):
    """The batch model (audio and crops per micro-batch) against 150 batches of the real loader."""
    for extra in ([], ["data.max_sample_size=48000", "data.max_tokens=200000"]):
        cfg = load_config("configs/tiny.yaml", [f"data.train=[{demo_index}]", "data.num_workers=0", *extra])
        predicted = plan_data(cfg.data, read_train_shards(cfg.data)).batch
        stream = DataStream(cfg.data, seed=0)
        try:
            batches = list(itertools.islice(stream, 150))
        finally:
            stream.close()
        audio = sum(batch.num_samples for batch in batches) / len(batches) / SAMPLE_RATE
        crops = sum(batch.source.shape[0] for batch in batches) / len(batches)
        assert predicted.audio_seconds == pytest.approx(audio, rel=0.05)
        assert predicted.crops == pytest.approx(crops, rel=0.05)


def test_the_card_is_the_flag_then_launcher_gpu_then_h100():
    cfg = load_config("configs/xlsr_300m.yaml", ["launcher.gpu=a100-80gb"])
    assert plan_of_run(cfg, 8, 8, "NVIDIA H200").gpu.key == "h200"  # a run: the card it runs on
    assert plan_of_run(cfg, 8, 8, None).gpu.key == "a100-80gb"  # a CPU run, or an unlisted card
    assert make_plan(cfg, PlanRequest(8, gpu="l40s", decode_seconds=0)).gpu.key == "l40s"
    assert make_plan(cfg, PlanRequest(8, decode_seconds=0)).gpu.key == "a100-80gb"
    plain = load_config("configs/xlsr_300m.yaml", [])
    assert make_plan(plain, PlanRequest(8, decode_seconds=0)).gpu.key == "h100"


def test_hybrid_sharding_shards_over_the_ranks_of_a_node():
    cfg = load_config("configs/xlsr_1b.yaml", ["distributed.fsdp_sharding=hybrid"])
    counts = ParameterCounts.of(build_objective(cfg))
    hybrid = estimate_memory(cfg, Ranks(16, 2), counts=counts)
    assert (
        hybrid.parameters == pytest.approx(4 * counts.total / 2) and hybrid.optimizer == 2 * hybrid.parameters
    )
    full = with_overrides(cfg, distributed={"fsdp_sharding": "full"})
    assert estimate_memory(full, Ranks(16, 2), counts=counts).parameters == pytest.approx(
        4 * counts.total / 16
    )


def test_the_fullest_bucket_sets_the_memory():
    """1.9M tokens: 5 crops of 20 s (1.6M samples), but 18 crops of the 6.5 s bucket (1.872M)."""
    cfg = load_config("configs/xlsr_300m.yaml", [])
    worst = estimate_memory(cfg, Ranks.single_node(8))
    assert (worst.batch.crops, worst.batch.crop_samples) == (18, 104_000)
    assert worst.allocated > estimate_memory(cfg, Ranks.single_node(8), batch=full_crops(cfg, 5)).allocated


def test_accumulated_gradients_count_from_the_first_micro_batch():
    cfg = load_config("configs/base.yaml", ["distributed.backend=ddp", "optim.batch_tokens=0"])
    one, two = (
        estimate_memory(with_overrides(cfg, optim={"update_freq": n}), Ranks.single_node(1)) for n in (1, 2)
    )
    assert one.peak_phase == two.peak_phase == "start of backward"
    assert two.allocated - one.allocated == pytest.approx(4 * ParameterCounts.of(build_objective(cfg)).total)


def test_a_failing_plan_never_stops_training(monkeypatch, caplog):
    from xlsr.engine import trainer
    from xlsr.engine.distributed import DistEnv

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the plan")

    monkeypatch.setattr("xlsr.plan.build.plan_of_run", broken)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert trainer._plan_figures(load_config("configs/tiny.yaml", []), env) is None
    assert "no plan for this run (RuntimeError: a bug in the plan)" in caplog.text


# --------------------------------------------------------------------------------------------------
# The memory model against measured peaks (benchmarks/memory_check.py: the real trainer, one update)


MEMORY_CASES = [
    # (config, ranks, crops of 4 s, overrides)
    ("configs/tiny.yaml", 1, 1, ["distributed.backend=ddp"]),
    ("configs/tiny.yaml", 1, 4, ["distributed.backend=ddp", "distributed.activation_checkpointing=layers"]),
    ("configs/tiny.yaml", 2, 4, ["distributed.backend=fsdp"]),
    ("configs/base.yaml", 1, 2, ["distributed.backend=ddp", "distributed.precision=fp32",
                                 "optim.update_freq=2"]),
    ("configs/base.yaml", 1, 4, ["distributed.backend=fsdp", "distributed.precision=bf16"]),
    ("configs/base.yaml", 1, 3, ["distributed.backend=fsdp", "distributed.precision=fp32",
                                 "distributed.activation_checkpointing=layers"]),
]  # fmt: skip
MEMORY_TOLERANCE = 0.15


@pytest.mark.slow
@pytest.mark.parametrize(("config", "ranks", "crops", "overrides"), MEMORY_CASES)
def test_memory_model_matches_measured_peaks(config, ranks, crops, overrides, tmp_path):
    out = tmp_path / "memory.json"
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run"]
    launcher += [] if ranks == 1 else ["--nproc_per_node", str(ranks), "--master_port", str(free_port())]
    command = [*launcher, "benchmarks/memory_check.py", "--config", config, "--crops", str(crops)]
    result = subprocess.run(
        [*command, "--json", str(out), *overrides],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    measured = json.loads(out.read_text())
    assert measured["world_size"] == ranks and measured["measured_peak_bytes"] > 0
    assert abs(measured["ratio"] - 1) <= MEMORY_TOLERANCE, measured


# --------------------------------------------------------------------------------------------------
# `xlsr launch slurm`: the plan before submitting


@pytest.fixture
def no_slurm(monkeypatch):
    monkeypatch.setenv("SLURM_CONF", "/nonexistent/slurm.conf")


def launch(run_dir: Path, index: Path, *extra: str) -> list[str]:
    config = ["--config", "configs/xlsr_2b.yaml", f"run_dir={run_dir}", f"data.train=[{index}]"]
    return ["launch", "slurm", *config, *extra]


TOO_BIG = ["distributed.activation_checkpointing=none", "data.max_tokens=12800000"]


def test_launch_refuses_a_run_that_does_not_fit_unless_forced(
    no_slurm, demo_index, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("launchers.slurm.submit.check_request", lambda *args: None)  # no cluster here
    submitted = []
    monkeypatch.setattr("launchers.slurm.cli.submit_launch", lambda plan: submitted.append(plan) or "4242")
    args = launch(tmp_path / "run", demo_index, *TOO_BIG, "--nodes", "2", "--gpus-per-node", "8")
    assert xlsr_main(args) == 2 and not submitted
    err = capsys.readouterr().err.strip()
    assert "does not fit in GPU memory" in err and "--force" in err and len(err.splitlines()) == 1
    assert "distributed.activation_checkpointing=layers" in err
    assert xlsr_main([*args, "--force"]) == 0 and len(submitted) == 1
    out = capsys.readouterr().out
    # the summary comes before the submission's lines
    assert out.index("plan: 2,162.9M parameters on 16 × h100") < out.index("submitted job 4242")
    assert "DOES NOT FIT" in out


def test_dry_run_of_a_run_that_does_not_fit_shows_the_plan(no_slurm, demo_index, tmp_path, capsys):
    args = launch(tmp_path / "run", demo_index, *TOO_BIG, "--nodes", "2", "--gpus-per-node", "8", "--dry-run")
    assert xlsr_main(args) == 0
    out, err = capsys.readouterr()
    assert "# ---- plan (xlsr plan) ----" in out and "DOES NOT FIT" in out
    assert "(a submission would be refused)" in err
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_the_whole_plan(no_slurm, demo_index, tmp_path, capsys):
    args = launch(
        tmp_path / "run", demo_index, "--nodes", "4", "--gpus-per-node", "8", "--gpu", "h200", "--dry-run"
    )
    assert xlsr_main(args) == 0
    out = capsys.readouterr().out
    sections = ["# model: wav2vec2, 2,162.9M parameters", "# memory per GPU", "of 140.4 GiB", "# speed at"]
    sections += ["# data (6 streams", "# loader:", "# checkpoints:", "#SBATCH --nodes=4"]
    for section in sections:
        assert section in out, section
