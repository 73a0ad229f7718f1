"""Config parsing: YAML + dotted overrides → typed dataclasses; unknown keys are errors."""

from pathlib import Path

import pytest

from xlsr.config import ConfigError, TrainConfig, dump_config, load_config, save_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_recipe_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.data.max_sample_size <= cfg.data.max_tokens


def test_recipes_carry_published_hyperparameters():
    base = load_config("configs/base.yaml")
    assert (base.model.encoder_layers, base.model.encoder_embed_dim, base.model.encoder_attention_heads) == (
        12,
        768,
        12,
    )
    assert (base.optim.lr, base.optim.warmup_updates, base.optim.max_update) == (5e-4, 32_000, 400_000)
    assert (base.loss.diversity_weight, base.loss.feature_penalty_weight) == (0.1, 10.0)
    xlsr = load_config("configs/xlsr_300m.yaml")
    assert xlsr.model.layer_norm_first and xlsr.model.extractor_mode == "layer_norm" and xlsr.data.normalize
    assert (xlsr.optim.warmup_updates, xlsr.optim.max_update, xlsr.data.max_sample_size) == (
        32_000,
        10**6,
        320_000,
    )
    assert (xlsr.data.language_alpha, xlsr.data.corpus_alpha) == (0.5, 0.5)
    two_b = load_config("configs/xlsr_2b.yaml")
    assert (two_b.model.encoder_layers, two_b.model.encoder_embed_dim, two_b.model.encoder_ffn_embed_dim) == (
        48,
        1920,
        7680,
    )


def test_overrides_are_typed():
    cfg = load_config(
        "configs/tiny.yaml", ["optim.lr=5e-4", "data.max_tokens=1400000", "model.latent_temp=[2,0.5,0.9]"]
    )
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.data.max_tokens == 1_400_000
    assert cfg.model.latent_temp == (2.0, 0.5, 0.9)
    assert load_config("configs/tiny.yaml", ["checkpoint.init_from=null"]).checkpoint.init_from is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1e-3", "unknown key 'optim.lrr' (did you mean 'lr'?)"),
        ("optimizer.lr=1e-3", "unknown key 'optimizer'"),
        ("optim.lr=fast", "'optim.lr' must be float"),
        ("data.max_tokens=1.5", "'data.max_tokens' must be int"),
        ("distributed.backend=horovod", "'distributed.backend' must be one of ['ddp', 'fsdp', 'deepspeed']"),
        ("model.latent_temp=[1,2]", "'model.latent_temp' must have 3 entries"),
        ("model.dropout", "must look like section.key=value"),
        ("optim.lr.x=1", "'lr' is not a section"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("configs/tiny.yaml", [override])
    assert message in str(err.value)


def test_unknown_key_in_file_lists_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  encoder_layer: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text and "model.encoder_layer" in text and "encoder_layers" in text


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("configs/xlsr_1b.yaml", ["seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert dump_config(cfg) == (tmp_path / "config.yaml").read_text()
