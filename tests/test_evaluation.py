"""Validation per language, the language-ID probe, `xlsr probe`, `xlsr plot`, continued pretraining."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from run_helpers import metrics, train_args, xlsr
from small_models import fairseq_model_cfg, small_config, to_fairseq_state

from xlsr.evaluation.probe import lid_probe, split_by_key
from xlsr.model.wav2vec2 import Wav2Vec2Model

VALID_KEYS = ("valid_loss_contrastive", "valid_accuracy", "valid_code_perplexity")


@pytest.fixture(scope="module")
def valid_index(demo_valid_index) -> Path:
    return demo_valid_index


def valid_lines(run_dir: Path, timings: bool = True) -> list[dict]:
    lines = metrics(run_dir, kind="valid")
    return lines if timings else [{k: v for k, v in line.items() if k != "valid_seconds"} for line in lines]


def run(index: Path, valid: Path, run_dir: Path, *overrides: str, nproc: int = 2):
    args = train_args(
        index, run_dir, f"data.valid=[{valid}]", "validation.interval_updates=5",
        "validation.max_seconds_per_language=20", "checkpoint.interval_updates=5", "validation.probe=false",
        *overrides,
    )  # fmt: skip
    return xlsr("launch", "local", "--nproc", str(nproc), *args)


# --------------------------------------------------------------------------------------------------
# The probe


def test_probe_is_deterministic_and_separates_separable_features():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(20)
    keys = [f"utt-{i:03d}" for i in range(len(labels))]
    centres = torch.randn(4, 16, generator=generator) * 3
    separable = centres[labels] + torch.randn(len(labels), 16, generator=generator)
    first, second = lid_probe(separable, labels, keys), lid_probe(separable, labels, keys)
    assert first == second
    assert first.accuracy == 1.0 and first.train_size == first.test_size == 40
    noise = torch.randn(len(labels), 16, generator=generator)
    assert lid_probe(noise, labels, keys).accuracy < 0.6  # chance is 0.25; 40 test points


def test_probe_split_depends_on_keys_only():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2])
    keys = [f"k{i}" for i in range(8)]
    split = split_by_key(keys, labels)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    shuffled = split_by_key([keys[i] for i in order], labels[order])
    assert torch.equal(shuffled, split[order])
    assert split[7]  # a language with one utterance trains only
    for label in (0, 1):
        members = split[labels == label]
        assert 0 < int(members.sum()) < len(members)


# --------------------------------------------------------------------------------------------------
# Validation during training


def test_validation_is_logged_per_language_and_survives_a_resume(demo_index, valid_index, tmp_path):
    whole = tmp_path / "whole"
    result = run(demo_index, valid_index, whole, "stop_at_update=10")
    assert result.returncode == 0, result.stderr
    lines = valid_lines(whole)
    assert [line["step"] for line in lines] == [0, 5, 10]
    languages = {key.split("/")[2] for key in lines[0] if key.startswith("valid/")}
    assert languages == {"de", "en", "eu", "mt", "sw", "yo"}
    assert all(set(VALID_KEYS) <= set(line) for line in lines)
    assert all(math.isfinite(line["valid_loss_contrastive"]) for line in lines)
    assert "valid update 5 | contrast" in result.stderr + result.stdout

    summary = json.loads((whole / "summary.json").read_text())
    assert summary["valid_loss_contrastive"] == lines[-1]["valid_loss_contrastive"]
    assert summary["valid/demo/en/loss_contrastive"] == lines[-1]["valid/demo/en/loss_contrastive"]
    best = json.loads((whole / "checkpoints" / "best.json").read_text())
    assert (
        summary["best"]["step"]
        == best["step"]
        == min(lines[1:], key=lambda line: line["valid_loss_contrastive"])["step"]
    )
    assert (whole / "checkpoints" / best["checkpoint"]).is_dir()

    split = tmp_path / "split"
    assert run(demo_index, valid_index, split, "stop_at_update=5").returncode == 0
    resumed = run(demo_index, valid_index, split, "stop_at_update=10")
    assert resumed.returncode == 0, resumed.stderr
    assert valid_lines(split, timings=False) == valid_lines(whole, timings=False)

    one_process = tmp_path / "one"
    assert run(demo_index, valid_index, one_process, "stop_at_update=1", nproc=1).returncode == 0
    at_zero, reference = valid_lines(one_process)[0], lines[0]
    for key, value in reference.items():
        if key not in ("valid_seconds", "kind"):
            assert at_zero[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_plot_writes_a_png(demo_index, valid_index, tmp_path):
    run_dir = tmp_path / "run"
    assert run(demo_index, valid_index, run_dir, "stop_at_update=5", nproc=1).returncode == 0
    result = xlsr("plot", str(run_dir), "-o", str(tmp_path / "curves.png"))
    assert result.returncode == 0, result.stderr
    data = (tmp_path / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "curves.png").shape[:2] == (1125, 1440)
    missing = xlsr("plot", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no metrics yet" in missing.stderr


# --------------------------------------------------------------------------------------------------
# `xlsr probe` on a released (fairseq-format) checkpoint


def test_probe_command_on_a_fairseq_checkpoint(valid_index, tmp_path):
    cfg, w2v2 = small_config(True)
    model = Wav2Vec2Model(cfg, w2v2, init_seed=3)
    checkpoint = {
        "args": None,
        "cfg": {"model": fairseq_model_cfg(cfg, w2v2), "task": {"normalize": True}},
        "model": to_fairseq_state(model.state_dict(), layer_norm=True),
    }
    fairseq_file = tmp_path / "xlsr_fairseq.pt"
    torch.save(checkpoint, fairseq_file)
    direct = xlsr("probe", str(fairseq_file), "--data", str(valid_index), "--max-seconds-per-language", "20",
                  "--json", str(tmp_path / "direct.json"))  # fmt: skip
    assert direct.returncode == 0, direct.stderr
    assert (
        xlsr("import", "--from", "fairseq", str(fairseq_file), str(tmp_path / "imported.pt")).returncode == 0
    )
    imported = xlsr(
        "probe", str(tmp_path / "imported.pt"), "--data", str(valid_index),
        "--max-seconds-per-language", "20", "--layer", "2", "--json", str(tmp_path / "imported.json"),
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("direct.json", "imported.json"))
    assert a["layer"] == 0 and b["layer"] == 2
    assert a["probe_lid_accuracy"] == b["probe_lid_accuracy"]  # layer 2 of 2 is the last: the same features
    # languages with a single held-out utterance only train the probe; the others are scored
    assert {"de", "en", "sw", "yo"} <= set(a["per_language"]) <= {"de", "en", "eu", "mt", "sw", "yo"}
    assert 0 <= a["probe_lid_accuracy"] <= 1
    assert "LID probe, layer last: accuracy" in direct.stdout


# --------------------------------------------------------------------------------------------------
# Continued pretraining from a checkpoint


def test_continued_pretraining_starts_from_the_trained_weights(demo_index, valid_index, tmp_path):
    trained = tmp_path / "trained"
    assert (
        run(
            demo_index, valid_index, trained, "stop_at_update=30", "validation.interval_updates=30"
        ).returncode
        == 0
    )
    checkpoint = trained / "checkpoints" / "step-00000030"
    continued = tmp_path / "continued"
    result = run(
        demo_index, valid_index, continued, "stop_at_update=10", f"checkpoint.init_from={checkpoint}",
        "optim.warmup_updates=5", "objective.wav2vec2.latent_temp=[1.0,0.5,0.995]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fresh, trained_lines, continued_lines = (
        valid_lines(trained)[0],
        valid_lines(trained),
        valid_lines(continued),
    )
    start = continued_lines[0]["valid_loss_contrastive"]
    # the weights, quantizer included, arrived: update 0 of the new run is where the old one ended
    assert start == pytest.approx(trained_lines[-1]["valid_loss_contrastive"], rel=1e-6)
    assert start < fresh["valid_loss_contrastive"] - 0.2
    assert continued_lines[-1]["valid_loss_contrastive"] < start  # and it keeps learning
    first = metrics(continued)[0]  # update 5: its own warmup has just reached the peak, its own temperature
    assert first["step"] == 5 and first["lr"] == pytest.approx(2e-3, rel=1e-9)
    assert first["temperature"] == pytest.approx(1.0 * 0.995**4, rel=1e-9)
