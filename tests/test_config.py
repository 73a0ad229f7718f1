"""Config: YAML + dotted overrides → typed dataclasses; presets; one validate() for every rule."""

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from xlsr.config import (
    MODEL_PRESETS,
    SAMPLE_RATE,
    WAV2VEC2_PRESETS,
    BestRQConfig,
    ConfigError,
    HealthConfig,
    ModelConfig,
    TrainConfig,
    ValidationConfig,
    Wav2Vec2Config,
    dump_config,
    effective_batch_hours,
    for_world_size,
    from_dict,
    load_config,
    save_config,
    to_dict,
    validate,
)
from xlsr.config import presets as P
from xlsr.config.validation import RANGES
from xlsr.model.encoder import conv_output_length
from xlsr.process import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("configs/*.yaml"))
TINY = "configs/tiny.yaml"

# The recipes as they were before presets existed (every architecture field spelled out). Each
# recipe must still load to exactly the config these texts load to.
RECIPES_BEFORE_PRESETS = {
    "tiny": """\
run_dir: runs/tiny
model: {extractor_mode: layer_norm, conv_bias: true, encoder_layers: 2, encoder_embed_dim: 128,
  conv_feature_layers: [[64, 10, 5], [64, 3, 2], [64, 3, 2], [64, 3, 2], [64, 3, 2], [64, 2, 2], [64, 2, 2]],
  encoder_ffn_embed_dim: 256, encoder_attention_heads: 4, layer_norm_first: true, final_dim: 64,
  latent_vars: 64, latent_groups: 2, latent_dim: 64, latent_temp: [2.0, 0.5, 0.995], dropout: 0.0,
  attention_dropout: 0.0, dropout_input: 0.0, dropout_features: 0.0, encoder_layerdrop: 0.0,
  feature_grad_mult: 1.0, num_negatives: 100}
loss: {diversity_weight: 0.1, feature_penalty_weight: 0.0}
data: {max_tokens: 160000, max_sample_size: 64000, min_sample_size: 16000, normalize: true, num_workers: 1,
  shuffle_buffer: 64, bucket_buffer: 32, num_buckets: 4}
optim: {lr: 2.0e-3, warmup_updates: 30, max_update: 300}
distributed: {backend: ddp, precision: fp32}
checkpoint: {interval_updates: 100, keep_last: 2}
logging: {interval: 20, wandb_mode: offline, wandb_project: xlsr-demo}
""",
    "base": """\
run_dir: runs/base
model: {extractor_mode: group_norm, conv_bias: false, encoder_layers: 12, encoder_embed_dim: 768,
  encoder_ffn_embed_dim: 3072, encoder_attention_heads: 12, layer_norm_first: false, final_dim: 256,
  latent_temp: [2.0, 0.5, 0.999995], dropout: 0.1, attention_dropout: 0.1, dropout_input: 0.1,
  dropout_features: 0.1, encoder_layerdrop: 0.05, feature_grad_mult: 0.1}
loss: {diversity_weight: 0.1, feature_penalty_weight: 10.0}
data: {max_tokens: 1400000, max_sample_size: 250000, min_sample_size: 32000, normalize: false}
optim: {lr: 5.0e-4, warmup_updates: 32000, max_update: 400000}
distributed: {backend: ddp, precision: bf16}
checkpoint: {interval_updates: 25000}
""",
    "large": """\
run_dir: runs/large
model: {extractor_mode: group_norm, conv_bias: false, encoder_layers: 24, encoder_embed_dim: 1024,
  encoder_ffn_embed_dim: 4096, encoder_attention_heads: 16, layer_norm_first: false, final_dim: 768,
  latent_temp: [2.0, 0.1, 0.999995], dropout: 0.1, attention_dropout: 0.1, dropout_input: 0.1,
  dropout_features: 0.1, encoder_layerdrop: 0.2, feature_grad_mult: 0.1}
loss: {diversity_weight: 0.1, feature_penalty_weight: 10.0}
data: {max_tokens: 1200000, max_sample_size: 320000, min_sample_size: 32000, normalize: false}
optim: {lr: 3.0e-4, warmup_updates: 20000, max_update: 250000}
distributed: {backend: ddp, precision: bf16}
checkpoint: {interval_updates: 25000}
""",
    "xlsr_300m": """\
run_dir: runs/xlsr_300m
model: {extractor_mode: layer_norm, conv_bias: true, encoder_layers: 24, encoder_embed_dim: 1024,
  encoder_ffn_embed_dim: 4096, encoder_attention_heads: 16, layer_norm_first: true, final_dim: 768,
  latent_dim: 768, latent_temp: [2.0, 0.1, 0.999995], dropout: 0.0, attention_dropout: 0.0,
  activation_dropout: 0.0, dropout_input: 0.0, dropout_features: 0.0, encoder_layerdrop: 0.0,
  feature_grad_mult: 1.0}
loss: {diversity_weight: 0.1, feature_penalty_weight: 0.0}
data: {language_alpha: 0.5, corpus_alpha: 0.5, max_tokens: 1900000, max_sample_size: 320000,
  min_sample_size: 32000, normalize: true}
optim: {lr: 1.0e-3, warmup_updates: 32000, max_update: 1000000}
distributed: {backend: fsdp, precision: bf16}
checkpoint: {interval_updates: 25000}
""",
    "xlsr_1b": """\
run_dir: runs/xlsr_1b
model: {extractor_mode: layer_norm, conv_bias: true, encoder_layers: 48, encoder_embed_dim: 1280,
  encoder_ffn_embed_dim: 5120, encoder_attention_heads: 16, layer_norm_first: true, final_dim: 1024,
  latent_dim: 1024, latent_temp: [2.0, 0.1, 0.999995], dropout: 0.0, attention_dropout: 0.0,
  activation_dropout: 0.0, dropout_input: 0.1, dropout_features: 0.0, encoder_layerdrop: 0.0,
  feature_grad_mult: 1.0}
loss: {diversity_weight: 0.1, feature_penalty_weight: 0.0}
data: {max_tokens: 1000000, max_sample_size: 320000, min_sample_size: 32000, normalize: true}
optim: {lr: 1.0e-3, warmup_updates: 32000, max_update: 1000000}
distributed: {backend: fsdp, precision: bf16, activation_checkpointing: layers}
checkpoint: {interval_updates: 25000}
""",
    "xlsr_2b": """\
run_dir: runs/xlsr_2b
model: {extractor_mode: layer_norm, conv_bias: true, encoder_layers: 48, encoder_embed_dim: 1920,
  encoder_ffn_embed_dim: 7680, encoder_attention_heads: 16, layer_norm_first: true, final_dim: 1024,
  latent_dim: 1024, latent_temp: [2.0, 0.1, 0.999995], dropout: 0.0, attention_dropout: 0.0,
  activation_dropout: 0.0, dropout_input: 0.1, dropout_features: 0.0, encoder_layerdrop: 0.0,
  feature_grad_mult: 1.0}
loss: {diversity_weight: 0.1, feature_penalty_weight: 0.0}
data: {max_tokens: 800000, max_sample_size: 320000, min_sample_size: 32000, normalize: true}
optim: {lr: 1.0e-3, warmup_updates: 32000, max_update: 1000000}
distributed: {backend: fsdp, precision: bf16, activation_checkpointing: layers}
checkpoint: {interval_updates: 25000}
""",
}

# A run's config.yaml as save_config wrote it before presets (tiny, run_dir=runs/my_run, seed=7).
SAVED_BEFORE_PRESETS = """\
run_dir: runs/my_run
seed: 7
stop_at_update: null
model: {extractor_mode: layer_norm, conv_bias: true, encoder_layers: 2, encoder_embed_dim: 128,
  conv_feature_layers: [[64, 10, 5], [64, 3, 2], [64, 3, 2], [64, 3, 2], [64, 3, 2], [64, 2, 2], [64, 2, 2]],
  encoder_ffn_embed_dim: 256, encoder_attention_heads: 4, layer_norm_first: true, conv_pos: 128,
  conv_pos_groups: 16, dropout: 0.0, attention_dropout: 0.0, activation_dropout: 0.0, dropout_input: 0.0,
  dropout_features: 0.0, encoder_layerdrop: 0.0, feature_grad_mult: 1.0, final_dim: 64, latent_vars: 64,
  latent_groups: 2, latent_dim: 64, latent_temp: [2.0, 0.5, 0.995], logit_temp: 0.1, num_negatives: 100,
  mask_prob: 0.65, mask_length: 10, mask_min_masks: 2, require_same_masks: true}
loss: {diversity_weight: 0.1, feature_penalty_weight: 0.0}
data: {train: [], language_alpha: 0.5, corpus_alpha: 0.5, max_tokens: 160000, max_sample_size: 64000,
  min_sample_size: 16000, normalize: true, num_workers: 1, shuffle_buffer: 64, bucket_buffer: 32,
  num_buckets: 4}
optim: {optimizer: adam, lr: 0.002, betas: [0.9, 0.98], eps: 1.0e-06, weight_decay: 0.01, clip_norm: 0.0,
  schedule: polynomial, warmup_updates: 30, max_update: 300, end_lr: 0.0, power: 1.0,
  tri_stage_ratios: [0.1, 0.4, 0.5], tri_stage_init_scale: 0.01, tri_stage_final_scale: 0.05,
  update_freq: 1, max_consecutive_nonfinite: 10}
distributed: {backend: ddp, precision: fp32, fsdp_sharding: full, zero_stage: 2,
  activation_checkpointing: none, activation_checkpointing_every: 1, compile: false, timeout_s: 600}
checkpoint: {dir: null, interval_updates: 100, keep_last: 2, keep_every: 0, resume: auto, init_from: null,
  async_save: false}
logging: {interval: 20, wandb_mode: offline, wandb_project: xlsr-demo, wandb_entity: null, run_name: null,
  progress: true}
launcher: {nodes: 1, gpus_per_node: 8, cpus_per_task: 10, partition: null, time_min: 4320, account: null,
  qos: null, constraint: null, exclude: null, mem_gb: null, max_requeues: 20}
"""


def load_text(tmp_path: Path, text: str, name: str = "config.yaml", overrides: list[str] = ()) -> TrainConfig:
    path = tmp_path / name
    path.write_text(text)
    return load_config(path, overrides)


# --------------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_recipe_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.data.max_sample_size <= cfg.data.max_tokens


def test_recipes_carry_published_hyperparameters():
    base = load_config("configs/base.yaml")
    m = base.model
    assert (m.encoder_layers, m.encoder_embed_dim, m.encoder_attention_heads) == (12, 768, 12)
    assert (base.optim.lr, base.optim.warmup_updates, base.optim.max_update) == (5e-4, 32_000, 400_000)
    assert (base.objective.wav2vec2.diversity_weight, base.objective.wav2vec2.feature_penalty_weight) == (
        0.1,
        10.0,
    )
    xlsr = load_config("configs/xlsr_300m.yaml")
    assert xlsr.model.layer_norm_first and xlsr.model.extractor_mode == "layer_norm" and xlsr.data.normalize
    assert (xlsr.optim.warmup_updates, xlsr.optim.max_update, xlsr.data.max_sample_size) == (
        32_000,
        10**6,
        320_000,
    )
    assert (xlsr.data.language_alpha, xlsr.data.corpus_alpha) == (0.5, 0.5)
    m = load_config("configs/xlsr_2b.yaml").model
    assert (m.encoder_layers, m.encoder_embed_dim, m.encoder_ffn_embed_dim) == (48, 1920, 7680)


def test_overrides_are_typed():
    cfg = load_config(
        TINY, ["optim.lr=5e-4", "data.max_tokens=1400000", "objective.wav2vec2.latent_temp=[2,0.5,0.9]"]
    )
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.data.max_tokens == 1_400_000
    assert cfg.objective.wav2vec2.latent_temp == (2.0, 0.5, 0.9)
    assert load_config(TINY, ["checkpoint.init_from=null"]).checkpoint.init_from is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1e-3", "unknown key 'optim.lrr' (did you mean 'lr'?)"),
        ("optimizer.lr=1e-3", "unknown key 'optimizer'"),
        ("optim.lr=fast", "'optim.lr' must be float"),
        ("data.max_tokens=1.5", "'data.max_tokens' must be int"),
        ("distributed.backend=horovod", "'distributed.backend' must be one of ['ddp', 'fsdp', 'deepspeed']"),
        ("objective.wav2vec2.latent_temp=[1,2]", "'objective.wav2vec2.latent_temp' must have 3 entries"),
        ("model.dropout", "must look like section.key=value"),
        ("optim.lr.x=1", "'lr' is not a section"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    assert message in str(err.value)


def test_unknown_key_in_file_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, "model:\n  encoder_layer: 3\n", "bad.yaml")
    text = str(err.value)
    assert str(tmp_path / "bad.yaml") in text and "model.encoder_layer" in text and "encoder_layers" in text


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_text(tmp_path, "- 1\n- 2\n")


# --------------------------------------------------------------------------------------------------
# Presets


def split_wav2vec2_keys(raw: dict) -> dict:
    """A config of xlsr 0.1 (wav2vec 2.0's keys in ``model``, its loss weights in ``loss``) with those
    keys where they are today (``objective.wav2vec2``)."""
    moved = {f.name for f in dataclasses.fields(Wav2Vec2Config)}
    model = {k: v for k, v in raw["model"].items() if k not in moved}
    w2v2 = {k: v for k, v in raw["model"].items() if k in moved} | raw.get("loss", {})
    rest = {k: v for k, v in raw.items() if k not in ("model", "loss")}
    return {**rest, "model": model, "objective": {"wav2vec2": w2v2}}


@pytest.mark.parametrize("name", RECIPES_BEFORE_PRESETS)
def test_every_recipe_loads_exactly_as_before_presets(name):
    old = yaml.safe_load(RECIPES_BEFORE_PRESETS[name])
    before = from_dict(TrainConfig, split_wav2vec2_keys(old), source=name)
    loaded = load_config(f"configs/{name}.yaml")
    # optim.batch_tokens came later; everything else is as it was
    assert dataclasses.replace(loaded, optim=dataclasses.replace(loaded.optim, batch_tokens=0)) == before
    assert MODEL_PRESETS[name]() == before.model
    weights = ("diversity_weight", "feature_penalty_weight")  # recipes state these, presets do not
    preset = dataclasses.replace(WAV2VEC2_PRESETS[name](), **{k: old["loss"][k] for k in weights})
    assert preset == before.objective.wav2vec2
    with pytest.raises(ConfigError, match=r"moved to objective\.wav2vec2"):  # the old spelling names the new
        from_dict(TrainConfig, old, source=name)


@pytest.mark.parametrize(
    ("name", "gpus", "samples_per_gpu", "hours"),
    [("base", 64, 1_400_000, 1.56), ("large", 128, 1_200_000, 2.67), ("xlsr_300m", 128, 1_900_000, 4.22),
     ("xlsr_1b", 200, 1_000_000, 3.47), ("xlsr_2b", 200, 800_000, 2.78)],
)  # fmt: skip
def test_recipes_state_their_papers_effective_batch(name, gpus, samples_per_gpu, hours):
    cfg = load_config(f"configs/{name}.yaml")
    assert cfg.optim.batch_tokens == gpus * samples_per_gpu
    at_paper_scale = for_world_size(cfg, gpus)
    assert at_paper_scale.optim.update_freq == 1
    assert effective_batch_hours(at_paper_scale, gpus) == pytest.approx(hours, abs=0.005)
    # on 8 GPUs the same recipe accumulates micro-batches to (nearly) the same batch
    on_8 = for_world_size(cfg, 8)
    assert on_8.optim.update_freq == round(gpus * samples_per_gpu / (8 * cfg.data.max_tokens))
    assert effective_batch_hours(on_8, 8) == pytest.approx(hours, rel=0.05)


def test_update_freq_derivation_rounds_to_the_nearest_and_never_below_one():
    cfg = load_config(TINY, ["optim.batch_tokens=1000000"])  # max_tokens 160000
    assert [for_world_size(cfg, world).optim.update_freq for world in (1, 2, 3, 4, 7, 64)] == [
        6,
        3,
        2,
        2,
        1,
        1,
    ]
    assert for_world_size(load_config(TINY), 4).optim.update_freq == 1  # off: update_freq as given


def test_batch_tokens_and_update_freq_are_exclusive():
    with pytest.raises(ConfigError, match=r"'optim.update_freq' must be 1 .* when optim.batch_tokens is set"):
        load_config(TINY, ["optim.batch_tokens=1000000", "optim.update_freq=2"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipes_state_only_what_differs_from_their_preset(path):
    model = yaml.safe_load(path.read_text())["model"]
    preset = to_dict(MODEL_PRESETS[model.pop("preset")]())
    assert {key: value for key, value in model.items() if preset[key] == value} == {}


def changed_fields(derived, parent) -> set[str]:
    return {
        f.name for f in dataclasses.fields(derived) if getattr(derived, f.name) != getattr(parent, f.name)
    }


def test_presets_derive_from_each_other():
    assert P.base() == ModelConfig() and P.base_wav2vec2() == Wav2Vec2Config()
    assert changed_fields(P.xlsr_2b(), P.xlsr_1b()) == {"encoder_embed_dim", "encoder_ffn_embed_dim"}
    widths = {"encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim"}
    assert changed_fields(P.xlsr_1b(), P.xlsr_300m()) == {*widths, "dropout_input"}
    assert changed_fields(P.xlsr_1b_wav2vec2(), P.xlsr_300m_wav2vec2()) == {"final_dim", "latent_dim"}
    assert set(WAV2VEC2_PRESETS) == set(MODEL_PRESETS)  # every size has its quantizer and head
    shapes = {}
    for name, make in MODEL_PRESETS.items():
        m = make()
        shapes[name] = (
            m.encoder_layers,
            m.encoder_embed_dim,
            m.encoder_ffn_embed_dim,
            m.encoder_attention_heads,
        )
    assert shapes == {
        "tiny": (2, 128, 256, 4),
        "base": (12, 768, 3072, 12),
        "large": (24, 1024, 4096, 16),
        "xlsr_300m": (24, 1024, 4096, 16),
        "xlsr_1b": (48, 1280, 5120, 16),
        "xlsr_2b": (48, 1920, 7680, 16),
    }
    assert P.tiny() is not P.tiny() and P.tiny().conv_feature_layers is not P.tiny().conv_feature_layers


def test_keys_next_to_a_preset_win_whatever_their_order(tmp_path):
    cfg = load_text(tmp_path, "model:\n  encoder_layers: 3\n  preset: base\n")
    assert cfg.model == dataclasses.replace(P.base(), encoder_layers=3)
    assert load_config(TINY, ["model.encoder_layers=3"]).model == dataclasses.replace(
        P.tiny(), encoder_layers=3
    )
    assert load_config(TINY, ["model.preset=large"]).model == P.large()
    assert from_dict(ModelConfig, {"preset": "xlsr_1b", "dropout": 0.05}) == dataclasses.replace(
        P.xlsr_1b(), dropout=0.05
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.preset=xlsr_3b", "'model.preset' must be one of ['tiny', 'base', 'large', 'xlsr_300m', "),
        ("model.preset=[1]", "'model.preset' must be one of"),
        ("optim.preset=base", "unknown key 'optim.preset'"),
        ("model.presett=base", "unknown key 'model.presett' (did you mean 'preset'?)"),
    ],
)
def test_bad_presets_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    assert message in str(err.value) and str(err.value).startswith(f"{TINY}: ")


# --------------------------------------------------------------------------------------------------
# Saved run configs


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_saved_config_round_trips(path, tmp_path):
    cfg = load_config(path, ["seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert load_config(tmp_path / "config.yaml") == cfg
    assert dump_config(cfg) == text and "preset" not in text  # every field written out, no preset needed
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary file left behind


def test_run_config_saved_before_the_objective_split_names_where_keys_went(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.dropout_features, .* moved to objective\.wav2vec2"):
        load_text(tmp_path, SAVED_BEFORE_PRESETS)
    old = yaml.safe_load(SAVED_BEFORE_PRESETS)
    cfg = from_dict(TrainConfig, split_wav2vec2_keys(old))
    assert cfg == load_config(TINY, ["run_dir=runs/my_run", "seed=7"])
    dumped = yaml.safe_load(dump_config(cfg))
    # the keys added since
    assert dumped["optim"].pop("batch_tokens") == 0 and dumped["data"].pop("valid") == []
    assert dumped["data"].pop("max_open_shards") == 16 and dumped["launcher"].pop("gpu") is None
    assert dumped["checkpoint"].pop("interval_minutes") == 0.0
    assert dumped.pop("validation") == dataclasses.asdict(ValidationConfig())
    assert dumped.pop("health") == dataclasses.asdict(HealthConfig())
    objective = dumped.pop("objective")
    assert objective["name"] == "wav2vec2" and objective["best_rq"] == dataclasses.asdict(BestRQConfig())
    assert objective["wav2vec2"] == split_wav2vec2_keys(old)["objective"]["wav2vec2"]
    assert dumped == {k: v for k, v in split_wav2vec2_keys(old).items() if k != "objective"}


# --------------------------------------------------------------------------------------------------
# Validation: every rule, at load time, one line naming the file and the key

DROPOUTS = ("model.dropout", "model.attention_dropout", "model.activation_dropout", "model.dropout_input")
DROPOUTS += ("objective.wav2vec2.dropout_features",)

# (overrides on configs/tiny.yaml, how the one-line error starts after "configs/tiny.yaml: ")
RULES = [
    ("optim.max_update=0", "'optim.max_update' must be >= 1, got 0"),
    ("stop_at_update=0", "'stop_at_update' must be >= 1, got 0"),
    ("stop_at_update=301", "'stop_at_update' must be <= optim.max_update (300), got 301"),
    (
        "health.hang_s=600",
        "'health.hang_s' must be < distributed.timeout_s (600), so that the watchdog speaks",
    ),
    ("logging.interval=0", "'logging.interval' must be >= 1, got 0"),
    ("checkpoint.interval_updates=0", "'checkpoint.interval_updates' must be >= 1, got 0"),
    ("checkpoint.interval_minutes=-1", "'checkpoint.interval_minutes' must be >= 0, got -1"),
    ("health.loss_spike_z=0", "'health.loss_spike_z' must be > 0, got 0"),
    ("health.window=4", "'health.window' must be >= 8, got 4"),
    ("health.rollback_lr_scale=1.5", "'health.rollback_lr_scale' must be in (0, 1], got 1.5"),
    ("health.grad_norm_z=-1", "'health.grad_norm_z' must be > 0, got -1"),
    ("health.max_rollbacks=-1", "'health.max_rollbacks' must be >= 0, got -1"),
    ("health.rollback_window=0", "'health.rollback_window' must be >= 1, got 0"),
    ("health.hang_s=-1", "'health.hang_s' must be >= 0, got -1"),
    ("health.rollback_lr_updates=-1", "'health.rollback_lr_updates' must be >= 0, got -1"),
    ("optim.update_freq=0", "'optim.update_freq' must be >= 1, got 0"),
    ("data.max_open_shards=0", "'data.max_open_shards' must be >= 1, got 0"),
    ("optim.batch_tokens=-1", "'optim.batch_tokens' must be >= 0, got -1"),
    ("validation.interval_updates=0", "'validation.interval_updates' must be >= 1, got 0"),
    ("validation.max_seconds_per_language=0", "'validation.max_seconds_per_language' must be > 0, got 0"),
    ("validation.probe_max_utterance_seconds=0", "'validation.probe_max_utterance_seconds' must be >= 1"),
    ("validation.probes_async=true", "'validation.probes_async' needs validation.probe and data.valid"),
    ("validation.probe_job.cpus=0", "'validation.probe_job.cpus' must be >= 1, got 0"),
    ("validation.probe_job.gpus=-1", "'validation.probe_job.gpus' must be >= 0, got -1"),
    ("validation.probe_job.mem_gb=0", "'validation.probe_job.mem_gb' must be >= 1, got 0"),
    ("validation.probe_job.time_min=0", "'validation.probe_job.time_min' must be >= 1, got 0"),
    ("validation.probe_job.max_requeues=-1", "'validation.probe_job.max_requeues' must be >= 0, got -1"),
    ("data.min_sample_size=0", "'data.min_sample_size' must be > 0, got 0"),
    ("data.max_sample_size=0", "'data.max_sample_size' must be >= 1, got 0"),
    ("data.max_tokens=0", "'data.max_tokens' must be >= 1, got 0"),
    ("data.max_sample_size=8000", "'data.max_sample_size' must be >= data.min_sample_size (16000), got 8000"),
    ("data.max_tokens=32000", "'data.max_tokens' must be >= data.max_sample_size (64000), got 32000"),
    ("optim.lr=0", "'optim.lr' must be > 0, got 0"),
    ("optim.lr=-1", "'optim.lr' must be > 0, got -1"),
    ("optim.warmup_updates=-1", "'optim.warmup_updates' must be >= 0, got -1"),
    ("data.num_workers=-1", "'data.num_workers' must be >= 0, got -1"),
    ("data.language_alpha=1.5", "'data.language_alpha' must be in [0, 1], got 1.5"),
    ("data.corpus_alpha=-0.1", "'data.corpus_alpha' must be in [0, 1], got -0.1"),
    ("checkpoint.keep_last=0", "'checkpoint.keep_last' must be >= 1, got 0"),
    ("checkpoint.keep_every=-1", "'checkpoint.keep_every' must be >= 0, got -1"),
    ("distributed.timeout_s=0", "'distributed.timeout_s' must be >= 1, got 0"),
    ("optim.max_consecutive_nonfinite=0", "'optim.max_consecutive_nonfinite' must be >= 1, got 0"),
    ("optim.clip_norm=-1", "'optim.clip_norm' must be >= 0, got -1"),
    ("optim.betas=[0.9,1.0]", "'optim.betas[1]' must be in [0, 1), got 1"),
    ("optim.betas=[-0.1,0.98]", "'optim.betas[0]' must be in [0, 1), got -0.1"),
    ("optim.eps=0", "'optim.eps' must be > 0, got 0"),
    ("optim.weight_decay=-0.01", "'optim.weight_decay' must be >= 0, got -0.01"),
    ("optim.end_lr=0.01", "'optim.end_lr' must be <= optim.lr (0.002), got 0.01"),
    ("optim.end_lr=-1", "'optim.end_lr' must be >= 0, got -1"),
    ("optim.power=-1", "'optim.power' must be >= 0, got -1"),
    (
        "optim.tri_stage_ratios=[0.5,0.5,0.5]",
        "'optim.tri_stage_ratios' must add up to 1, got [0.5, 0.5, 0.5]",
    ),
    ("optim.tri_stage_ratios=[1.5,-0.5,0]", "'optim.tri_stage_ratios[0]' must be in [0, 1], got 1.5"),
    ("optim.tri_stage_init_scale=2", "'optim.tri_stage_init_scale' must be in [0, 1], got 2"),
    ("optim.tri_stage_final_scale=0", "'optim.tri_stage_final_scale' must be in (0, 1], got 0"),
    *[(f"{name}=1", f"'{name}' must be in [0, 1), got 1") for name in DROPOUTS],
    *[(f"{name}=-0.5", f"'{name}' must be in [0, 1), got -0.5") for name in DROPOUTS],
    ("model.encoder_layerdrop=1", "'model.encoder_layerdrop' must be in [0, 1), got 1"),
    ("objective.wav2vec2.mask_prob=1.5", "'objective.wav2vec2.mask_prob' must be in [0, 1], got 1.5"),
    ("objective.wav2vec2.mask_length=0", "'objective.wav2vec2.mask_length' must be >= 1, got 0"),
    ("objective.wav2vec2.mask_min_masks=-1", "'objective.wav2vec2.mask_min_masks' must be >= 0, got -1"),
    ("objective.best_rq.num_codebooks=0", "'objective.best_rq.num_codebooks' must be >= 1, got 0"),
    ("objective.best_rq.codebook_size=1", "'objective.best_rq.codebook_size' must be >= 2, got 1"),
    ("objective.best_rq.codebook_dim=0", "'objective.best_rq.codebook_dim' must be >= 1, got 0"),
    ("objective.best_rq.num_mel_bins=0", "'objective.best_rq.num_mel_bins' must be >= 1, got 0"),
    ("objective.best_rq.mask_prob=1.5", "'objective.best_rq.mask_prob' must be in [0, 1], got 1.5"),
    ("objective.best_rq.mask_length=0", "'objective.best_rq.mask_length' must be >= 1, got 0"),
    ("objective.best_rq.mask_min_masks=-1", "'objective.best_rq.mask_min_masks' must be >= 0, got -1"),
    (
        "objective.name=best_rq model.conv_feature_layers=[[8,10,5],[8,3,3]]",
        "'model.conv_feature_layers' must have a total stride that is a multiple of 160 samples for best_rq",
    ),
    ("objective.name=hubert", "'objective.name' must be one of ['wav2vec2', 'best_rq'], got 'hubert'"),
    (
        "health.loss_spike=ignore",
        "'health.loss_spike' must be one of ['warn', 'stop', 'rollback'], got 'ignore'",
    ),
    ("objective.wav2vec2.num_negatives=0", "'objective.wav2vec2.num_negatives' must be >= 1, got 0"),
    ("objective.wav2vec2.logit_temp=0", "'objective.wav2vec2.logit_temp' must be > 0, got 0"),
    ("model.feature_grad_mult=-1", "'model.feature_grad_mult' must be >= 0, got -1"),
    ("model.encoder_layers=0", "'model.encoder_layers' must be >= 1, got 0"),
    ("model.encoder_embed_dim=0", "'model.encoder_embed_dim' must be >= 1, got 0"),
    ("model.encoder_ffn_embed_dim=0", "'model.encoder_ffn_embed_dim' must be >= 1, got 0"),
    ("model.conv_pos=0", "'model.conv_pos' must be >= 1, got 0"),
    ("model.conv_pos_groups=0", "'model.conv_pos_groups' must be >= 1, got 0"),
    ("objective.wav2vec2.latent_dim=-1", "'objective.wav2vec2.latent_dim' must be >= 0, got -1"),
    ("objective.wav2vec2.latent_groups=0", "'objective.wav2vec2.latent_groups' must be >= 1, got 0"),
    ("model.encoder_attention_heads=0", "'model.encoder_attention_heads' must be >= 1, got 0"),
    (
        "model.encoder_attention_heads=3",
        "'model.encoder_embed_dim' must be a multiple of model.encoder_attention_heads (3), got 128",
    ),
    ("model.conv_pos_groups=3", "'model.encoder_embed_dim' must be a multiple of model.conv_pos_groups (3)"),
    (
        "objective.wav2vec2.latent_groups=3",
        "'objective.wav2vec2.latent_dim' must be a multiple of objective.wav2vec2.latent_groups (3), got 64",
    ),
    (
        "objective.wav2vec2.latent_groups=3 objective.wav2vec2.latent_dim=0",
        "'objective.wav2vec2.final_dim' must be a multiple of objective.wav2vec2.latent_groups",
    ),
    ("objective.wav2vec2.latent_vars=0", "'objective.wav2vec2.latent_vars' must be >= 1, got 0"),
    ("objective.wav2vec2.final_dim=-1", "'objective.wav2vec2.final_dim' must be >= 0, got -1"),
    ("model.conv_feature_layers=[[64,0,5]]", "'model.conv_feature_layers[0][1]' must be >= 1, got 0"),
    ("model.conv_feature_layers=[]", "'model.conv_feature_layers' must list at least one conv block"),
    (
        "objective.wav2vec2.latent_temp=[0.5,2,0.9]",
        "'objective.wav2vec2.latent_temp' must be (start, floor, decay) with 0 < floor <= start",
    ),
    (
        "objective.wav2vec2.latent_temp=[2,0,0.9]",
        "'objective.wav2vec2.latent_temp' must be (start, floor, decay) with 0 < floor <= start",
    ),
    (
        "objective.wav2vec2.latent_temp=[2,0.5,1.5]",
        "'objective.wav2vec2.latent_temp[2]' must be in (0, 1], got 1.5",
    ),
    ("objective.wav2vec2.diversity_weight=-1", "'objective.wav2vec2.diversity_weight' must be >= 0, got -1"),
    (
        "objective.wav2vec2.feature_penalty_weight=-1",
        "'objective.wav2vec2.feature_penalty_weight' must be >= 0, got -1",
    ),
    ("data.shuffle_buffer=-1", "'data.shuffle_buffer' must be >= 0, got -1"),
    ("data.bucket_buffer=-1", "'data.bucket_buffer' must be >= 0, got -1"),
    ("data.num_buckets=0", "'data.num_buckets' must be >= 1, got 0"),
    (
        "distributed.activation_checkpointing_every=0",
        "'distributed.activation_checkpointing_every' must be >= 1",
    ),
    ("seed=-1", "'seed' must be >= 0, got -1"),
    ("run_dir=''", "'run_dir' must not be empty, got ''"),
    ("checkpoint.resume=''", "'checkpoint.resume' must not be empty, got ''"),
    ("launcher.nodes=0", "'launcher.nodes' must be >= 1, got 0"),
    ("launcher.gpus_per_node=-1", "'launcher.gpus_per_node' must be >= 0, got -1"),
    ("launcher.cpus_per_task=0", "'launcher.cpus_per_task' must be >= 1, got 0"),
    ("launcher.time_min=0", "'launcher.time_min' must be >= 1, got 0"),
    ("launcher.mem_gb=0", "'launcher.mem_gb' must be >= 1, got 0"),
    ("launcher.max_requeues=-1", "'launcher.max_requeues' must be >= 0, got -1"),
    (
        "launcher.gpu=h900",
        "'launcher.gpu' must be one of h200, h100, a100-80gb, a100-40gb, l40s, v100-32gb, "
        "v100-16gb, got 'h900'",
    ),
]

DEEPSPEED = "distributed.backend=deepspeed"
# Knobs the chosen backend would ignore.
BACKEND_RULES = [
    (
        f"{DEEPSPEED} distributed.compile=true",
        "'distributed.compile' must be false with distributed.backend=deepspeed, which runs the model "
        "uncompiled, got true",
    ),
    (
        f"{DEEPSPEED} checkpoint.async_save=true",
        "'checkpoint.async_save' must be false with distributed.backend=deepspeed, which saves "
        "synchronously, got true",
    ),
    (
        "distributed.fsdp_sharding=hybrid",
        "'distributed.fsdp_sharding' must be 'full' with distributed.backend=ddp (only fsdp reads it), "
        "got 'hybrid'",
    ),
    (f"{DEEPSPEED} distributed.fsdp_sharding=hybrid", "'distributed.fsdp_sharding' must be 'full' with dist"),
    (
        "distributed.zero_stage=3",
        "'distributed.zero_stage' must be 2 with distributed.backend=ddp (only deepspeed reads it), got 3",
    ),
    (
        "distributed.backend=fsdp distributed.zero_stage=1",
        "'distributed.zero_stage' must be 2 with distributed",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "message"), RULES + BACKEND_RULES, ids=[o for o, _ in RULES + BACKEND_RULES]
)
def test_each_rule_fails_at_load_naming_file_and_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, overrides.split())
    assert str(err.value).startswith(f"{TINY}: {message}") and "\n" not in str(err.value)


def test_every_range_has_a_case():
    named = {message.split("'")[1].split("[")[0] for _, message in RULES}
    assert set(RANGES) - named == set()


def test_error_reads_as_one_line():
    with pytest.raises(ConfigError) as err:
        load_config(TINY, ["optim.update_freq=0"])
    assert str(err.value) == "configs/tiny.yaml: 'optim.update_freq' must be >= 1, got 0"
    assert isinstance(err.value, UserError)  # the CLI prints it as one line and exits with code 2


def test_rules_are_checked_in_files_too(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, "logging:\n  interval: 0\n", "run.yaml")
    assert str(err.value) == f"{tmp_path / 'run.yaml'}: 'logging.interval' must be >= 1, got 0"


@pytest.mark.parametrize(
    "overrides",
    [
        ["distributed.backend=deepspeed", "distributed.zero_stage=3"],
        [
            "distributed.backend=deepspeed",
            "distributed.zero_stage=1",
            "distributed.activation_checkpointing=layers",
        ],
        ["distributed.backend=fsdp", "distributed.fsdp_sharding=hybrid", "distributed.compile=true"],
        ["distributed.backend=fsdp", "checkpoint.async_save=true"],
        ["distributed.backend=ddp", "checkpoint.async_save=true", "distributed.compile=true"],
        ["data.max_tokens=16000", "data.max_sample_size=16000", "data.min_sample_size=16000"],
        [
            "data.language_alpha=0",
            "data.corpus_alpha=1",
            "objective.wav2vec2.mask_prob=1",
            "objective.wav2vec2.mask_prob=0",
        ],
        ["stop_at_update=300", "optim.warmup_updates=0", "optim.end_lr=2e-3", "data.num_workers=0"],
        ["optim.max_update=1", "optim.warmup_updates=30"],  # a short benchmark of a long-warmup recipe
        ["checkpoint.keep_every=0", "data.shuffle_buffer=0", "data.bucket_buffer=0", "optim.clip_norm=0"],
        [
            "objective.wav2vec2.latent_dim=0",
            "objective.wav2vec2.final_dim=0",
        ],  # codebook size falls back to the model dim
    ],
)
def test_values_on_the_edges_are_accepted(overrides):
    load_config(TINY, overrides)


def test_defaults_and_every_recipe_pass_validate_directly():
    validate(TrainConfig())
    for path in CONFIGS:
        validate(load_config(path), str(path))
    cfg = TrainConfig()
    cfg.optim.update_freq = 0  # e.g. a launcher changed a field after loading
    with pytest.raises(ConfigError, match=r"^flags: 'optim.update_freq' must be >= 1, got 0$"):
        validate(cfg, "flags")


# --------------------------------------------------------------------------------------------------
# Derived quantities


def test_frame_rate_and_frame_counts_follow_the_conv_strides():
    assert SAMPLE_RATE == 16_000
    for model in (P.base(), P.tiny(), P.xlsr_2b()):
        assert model.frame_rate_hz == 50.0  # 16 kHz over the total stride 5·2·2·2·2·2·2 = 320
        assert [model.num_frames(n) for n in (32_000, 250_000, 320_000, 400, 399)] == [99, 781, 999, 1, 0]
        assert len(model.conv_output_lengths(32_000)) == 7
    model = dataclasses.replace(P.base(), conv_feature_layers=[(512, 10, 5), (512, 8, 4)])
    assert model.frame_rate_hz == 800.0


def test_num_frames_matches_the_model():
    model, lengths = P.base(), torch.arange(400, 40_000, 37)
    expected = lengths
    for _, kernel, stride in model.conv_feature_layers:
        expected = conv_output_length(expected, kernel, stride)
    assert [model.num_frames(int(n)) for n in lengths] == expected.tolist()


def test_a_retired_key_of_an_old_saved_config_is_ignored_with_a_warning(caplog):
    """Every config.yaml a run saved holds every field of its version: old runs stay readable."""
    cfg = load_config(TINY, ["validation.probe_layer=2"])
    assert cfg.validation.probe and "'validation.probe_layer' is no longer used" in caplog.text
