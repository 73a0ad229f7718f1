"""The weights layer (xlsr.weights): one reader per format behind read_weights, used by export,
import, probe and init_from, for every objective."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from run_helpers import ENV, train_args, xlsr
from small_models import small_config

from xlsr.config import ObjectiveConfig, TrainConfig, load_config
from xlsr.engine.checkpoint import complete_checkpoints
from xlsr.model import Wav2Vec2Model
from xlsr.objectives import build_objective
from xlsr.weights import (
    ENCODER_PREFIXES,
    ModelWeights,
    UnreadableCheckpointError,
    load_pretrained,
    read_weights,
)
from xlsr.weights.model_file import MODEL_FILE_VERSION, load_model_file

ROOT = Path(__file__).resolve().parents[1]


class SystemCall:
    """Pickles into a call of os.system: what a malicious pytorch_model.bin holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pytorch_model_bin_is_one_line_and_runs_nothing(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    model = Wav2Vec2Model(*small_config(layer_norm=True))
    from xlsr.model.interop import hf_config_dict

    (hf / "config.json").write_text(json.dumps(hf_config_dict(model.cfg, model.w2v2)))
    with open(hf / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"weight": SystemCall(tmp_path / "pwned")}, handle, protocol=2)  # torch.save's
    result = xlsr("import", "--from", "hf", str(hf), str(tmp_path / "out.pt"))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "pytorch_model.bin: refused, not a plain state dict (it would call posix.system)" in (
        result.stderr
    )
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out.pt").exists()


def test_model_files_of_version_1_read_as_wav2vec2(tmp_path):
    model = Wav2Vec2Model(*small_config(layer_norm=True))
    from xlsr.config import to_dict

    path = tmp_path / "old.pt"
    old_config = {**to_dict(model.cfg), **to_dict(model.w2v2)}  # version 1: one flat model config
    for loss_weight in ("diversity_weight", "feature_penalty_weight"):
        del old_config[loss_weight]
    torch.save({"format": "xlsr-model", "version": 1, "model_config": old_config,
                "model": model.state_dict()}, path)  # fmt: skip
    assert load_model_file(path)["version"] == MODEL_FILE_VERSION
    weights = read_weights(path)
    assert weights.objective.name == "wav2vec2" and weights.objective.wav2vec2 == model.w2v2
    assert weights.build().cfg == model.cfg


def test_encoder_only_build_needs_every_encoder_weight_and_nothing_else():
    cfg = TrainConfig(model=small_config(layer_norm=True)[0], objective=ObjectiveConfig(name="best_rq"))
    state = build_objective(cfg).build_model().state_dict()
    encoder = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
    assert set(state) - set(encoder) == {
        "quantizer.projection",
        "quantizer.codebooks",
        "head.weight",
        "head.bias",
    }
    ModelWeights(cfg.model, encoder, cfg.objective, "x").build(encoder_only=True)
    with pytest.raises(UnreadableCheckpointError, match="missing"):
        ModelWeights(cfg.model, encoder, cfg.objective, "x").build()
    del encoder["encoder.layer_norm.weight"]
    with pytest.raises(UnreadableCheckpointError, match=r"encoder\.layer_norm\.weight"):
        ModelWeights(cfg.model, encoder, cfg.objective, "x").build(encoder_only=True)


@pytest.fixture(scope="module")
def checkpoints(demo_index, tmp_path_factory) -> dict[str, Path]:
    """A wav2vec 2.0 and a BEST-RQ checkpoint of the tiny encoder, 4 updates each (2 processes)."""
    root = tmp_path_factory.mktemp("weights")
    found = {}
    for name, config in (("wav2vec2", "configs/tiny.yaml"), ("best_rq", "configs/tiny_best_rq.yaml")):
        args = train_args(demo_index, root / name, "optim.max_update=4")[2:]
        result = xlsr("launch", "local", "--nproc", "2", "--config", config, *args)
        assert result.returncode == 0, result.stderr[-3000:]
        [(_, found[name])] = complete_checkpoints(root / name / "checkpoints")
    return found


@pytest.mark.slow
def test_best_rq_exports_its_encoder_to_hugging_face(checkpoints, tmp_path):
    result = xlsr("export", "--to", "hf", str(checkpoints["best_rq"]), str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2Model"]
    # Every exported file gets the umask's mode (0644 under the usual 022), safetensors' one too.
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert len(set(modes.values())) == 1 and modes["model.safetensors"] == modes["config.json"], modes
    theirs = transformers.Wav2Vec2Model.from_pretrained(tmp_path / "hf").eval()
    ours = load_pretrained(checkpoints["best_rq"])
    audio = torch.randn(2, 24_000)
    with torch.no_grad():
        hidden, _ = ours.encode(audio)
        expected = theirs(audio).last_hidden_state
    torch.testing.assert_close(hidden, expected, rtol=1e-4, atol=1e-5)
    back = read_weights(tmp_path / "hf")  # and it reads back as an encoder
    assert back.encoder_only and set(back.build(encoder_only=True).state_dict()) >= set(back.encoder_state())
    # ... which `xlsr import` turns into a model file that init_from takes (the encoder part)
    imported = xlsr("import", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "encoder.pt"))
    assert imported.returncode == 0, imported.stderr
    assert read_weights(tmp_path / "encoder.pt").encoder_only


@pytest.mark.slow
def test_probe_reads_a_best_rq_checkpoint(checkpoints, demo_index):
    result = xlsr(
        "probe", str(checkpoints["best_rq"]), "--data", str(demo_index), "--max-seconds-per-language", "5"
    )
    assert result.returncode == 0, result.stderr
    assert "LID probe, layer last: accuracy" in result.stdout


@pytest.mark.slow
def test_a_best_rq_run_starts_from_a_wav2vec2_encoder(checkpoints, tmp_path):
    """Continued pretraining with another objective: the encoder comes from init_from, the head is new."""
    from test_engine import WORKER

    run_dir, dump = tmp_path / "run", tmp_path / "initial.pt"
    # one process, no update: the weights right after start-up
    train = ["--config", "configs/tiny_best_rq.yaml", f"run_dir={run_dir}", "optim.max_update=1",
             "stop_at_update=1", f"checkpoint.init_from={checkpoints['wav2vec2']}", "data.num_workers=0",
             "logging.wandb_mode=disabled", "logging.progress=false"]  # fmt: skip
    batches = tmp_path / "batches.pt"
    torch.save([{"source": torch.randn(2, 32_000), "padding_mask": None, "num_samples": 64_000}], batches)
    code = (
        "import sys; from launchers.local import launch_local; "
        f"sys.exit(launch_local(1, sys.argv[1:], grace_s=10, entry=({str(WORKER)!r},)))"
    )
    argv = [str(batches), "--dump-params", str(dump), "--", *train]
    result = subprocess.run([sys.executable, "-c", code, *argv], env=ENV, capture_output=True, text=True,
                            timeout=300, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "was trained with wav2vec2: its encoder initialises this best_rq run" in result.stderr
    initial = torch.load(dump, weights_only=True)
    source = read_weights(checkpoints["wav2vec2"]).state
    for key, value in initial.items():
        if key.startswith(ENCODER_PREFIXES):
            assert torch.equal(value, source[key]), key
    fresh = build_objective(load_config(ROOT / "configs/tiny_best_rq.yaml")).build_model(init_seed=1)
    assert torch.equal(initial["head.weight"], fresh.state_dict()["head.weight"])  # the head's own init
