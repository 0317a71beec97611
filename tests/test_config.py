"""Invalid configs are rejected before anything compiles, with the field and value named."""

import json

import pytest

from scaling import config as config_lib


def _set(c, dotted, value):
    node = c
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


@pytest.mark.parametrize("field,value,devices,fragment", [
    ("model.d_model", 65, 1, "model.d_model=65"),
    ("model.n_heads", 0, 1, "model.n_heads=0"),
    ("model.n_kv_heads", 3, 1, "model.n_heads=4"),
    ("model.norm", "batchnorm", 1, "model.norm='batchnorm'"),
    ("model.positions", "alibi", 1, "model.positions"),
    ("optim.name", "adamax", 1, "optim.name='adamax'"),
    ("optim.schedule", "step", 1, "optim.schedule"),
    ("train.batch_size", -4, 1, "train.batch_size=-4"),
    ("train.batch_size", 12, 8, "train.batch_size=12"),
    ("train.microbatches", 5, 1, "train.microbatches=5"),
    ("mesh.data", 3, 8, "mesh"),
    ("mesh.tensor", 3, 8, "mesh.fsdp"),
    ("data.seq_len", 4096, 1, "data.seq_len=4096"),
    ("model.resid_dropout", 1.5, 1, "model.resid_dropout=1.5"),
    ("data.task.mix_rate", 2.0, 1, "data.task.mix_rate=2.0"),
    ("data.source", "web", 1, "data.source='web'"),
])
def test_bad_config_names_field(field, value, devices, fragment):
    c = config_lib.default_config()
    _set(c, field, value)
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate(c, devices)
    assert fragment in str(info.value)


def test_tensor_parallel_divisibility_named():
    c = config_lib.default_config()
    c.model.n_heads, c.model.n_kv_heads, c.model.d_model = 4, 1, 64
    c.mesh.data, c.mesh.tensor = 4, 2
    with pytest.raises(config_lib.ConfigError, match="model.n_kv_heads=1"):
        config_lib.validate(c, 8)


def test_default_config_is_valid_and_round_trips():
    c = config_lib.default_config()
    config_lib.validate(c, 8)
    c.model.d_model = 96
    c.model.n_heads = 6
    back = config_lib.from_dict(json.loads(config_lib.to_json(c)))
    assert back.model.d_model == 96 and back.model.n_heads == 6
    assert config_lib.config_hash(back) == config_lib.config_hash(c)
    c.model.d_model = 128
    assert config_lib.config_hash(back) != config_lib.config_hash(c)


def test_cli_rejects_unknown_field_and_bad_value(tmp_path, capsys):
    from scaling import cli

    with pytest.raises(SystemExit):
        cli.main(["scaling", "train", "--config", "configs/lm_tiny.py",
                  "--config.model.d_modle=3", "--workdir", str(tmp_path)])
    assert "d_modle" in capsys.readouterr().err
    code = cli.main(["scaling", "train", "--config", "configs/lm_tiny.py",
                     "--config.model.n_heads=3", "--workdir", str(tmp_path / "run")])
    assert code == 2
    assert "config.model.d_model=64: must be divisible by model.n_heads=3" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_steps_from_token_budget():
    c = config_lib.default_config()
    c.data.num_tokens = 10_000
    c.data.epochs = 2
    c.train.batch_size, c.data.seq_len = 8, 128
    assert config_lib.train_steps(c) == -(-20_000 // 1024)


@pytest.mark.parametrize("overrides,fragments", [
    ({"model.attention_impl": "flash"}, ["model.attention_impl='flash'"]),
    ({"model.attention_impl": "xla", "model.attn_dropout": 0.1},
     ["model.attn_dropout=0.1", "model.attention_impl='xla'"]),
    ({"model.attention_impl": "cudnn", "model.dtype": "bfloat16", "model.attn_dropout": 0.1},
     ["model.attn_dropout=0.1", "model.attention_impl='cudnn'"]),
    ({"model.attention_impl": "cudnn"}, ["model.dtype='float32'", "model.attention_impl"]),
    ({"model.attention_impl": "cudnn", "model.dtype": "bfloat16", "model.d_model": 48},
     ["model.head_dim=12", "multiple of 8"]),
    ({"model.attention_impl": "cudnn", "model.dtype": "float16", "model.head_dim": 264},
     ["model.head_dim=264", "<= 256"]),
    ({"model.attention_impl": "cudnn", "model.dtype": "bfloat16", "data.seq_len": 127},
     ["data.seq_len=127", "model.attention_impl='cudnn'"]),
])
def test_bad_attention_impl_names_field(overrides, fragments):
    c = config_lib.default_config()
    for field, value in overrides.items():
        _set(c, field, value)
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate(c, 1)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("overrides", [
    {"model.attention_impl": "einsum", "model.attn_dropout": 0.1},
    {"model.attention_impl": "xla"},
    {"model.attention_impl": "cudnn", "model.dtype": "bfloat16"},
    {"model.attention_impl": "cudnn", "model.dtype": "float16", "model.head_dim": 256},
])
def test_good_attention_impl_is_valid(overrides):
    c = config_lib.default_config()
    for field, value in overrides.items():
        _set(c, field, value)
    config_lib.validate(c, 1)


def test_cudnn_attention_needs_a_gpu_at_build():
    import jax

    from scaling.train import setup as setup_lib
    from tests import helpers

    c = helpers.tiny_lm_config(**{"model.attention_impl": "cudnn", "model.dtype": "bfloat16"})
    config_lib.validate(c, 1)  # valid as a config: only the devices are wrong
    assert jax.devices()[0].platform == "cpu"
    with pytest.raises(config_lib.ConfigError, match="config.model.attention_impl='cudnn'.*GPU"):
        setup_lib.build(c, jax.devices()[:1])


def test_cudnn_head_dim_bound_depends_on_gpu_generation():
    from types import SimpleNamespace

    from scaling.train import setup as setup_lib

    def gpu(capability):
        return SimpleNamespace(platform="gpu", compute_capability=capability,
                               device_kind="a GPU")

    c = config_lib.default_config()
    c.model.attention_impl, c.model.dtype, c.model.head_dim = "cudnn", "bfloat16", 256
    setup_lib.check_platform(c, [gpu("9.0")])  # Hopper: up to 256
    with pytest.raises(config_lib.ConfigError, match="config.model.head_dim=256"):
        setup_lib.check_platform(c, [gpu("8.0")])  # Ampere: up to 128
    c.model.head_dim = 128
    setup_lib.check_platform(c, [gpu("8.0")])


@pytest.mark.parametrize("field,value,fragment", [
    ("optim.b1", 1.5, "config.optim.b1=1.5: must be a finite number in [0, 1)"),
    ("optim.b2", 1.0, "config.optim.b2=1.0"),
    ("optim.lr", float("inf"), "config.optim.lr=inf: must be a finite number > 0"),
    ("optim.lr", float("nan"), "config.optim.lr=nan"),
    ("optim.clip_norm", -1.0, "config.optim.clip_norm=-1.0: must be a finite number >= 0"),
    ("optim.eps", -1e-8, "config.optim.eps=-1e-08"),
    ("data.eval_tokens", -5, "config.data.eval_tokens=-5: must be at least one row"),
    ("data.eval_tokens", 100, "config.data.eval_tokens=100"),
    ("checkpoint.every", -1, "config.checkpoint.every=-1: must be an integer >= 0"),
    ("checkpoint.log_max", 0, "config.checkpoint.log_max=0"),
    ("model.rope_theta", 0.0, "config.model.rope_theta=0.0: must be a finite number > 0"),
    ("model.norm_eps", 0.0, "config.model.norm_eps=0.0"),
    ("model.init_std", -0.02, "config.model.init_std=-0.02"),
    ("model.head_dim", -8, "config.model.head_dim=-8"),
    ("seed", -1, "config.seed=-1"),
    ("train.eval_every", -10, "config.train.eval_every=-10"),
    ("train.peak_flops", float("inf"), "config.train.peak_flops=inf"),
    ("data.augment.span_length", 0, "config.data.augment.span_length=0"),
    ("data.epochs", float("inf"), "config.data.epochs=inf"),
])
def test_numeric_domains_name_the_field(field, value, fragment):
    c = config_lib.default_config()
    _set(c, field, value)
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate(c)
    assert fragment in str(info.value)


def test_unknown_field_set_in_a_config_file_is_an_error_naming_it():
    c = config_lib.default_config()
    c.model.d_modle = 32  # what a typo in get_config() does: ConfigDicts accept new fields
    with pytest.raises(config_lib.ConfigError,
                       match=r"config.model.d_modle=32: unknown field.*did you mean model.d_model"):
        config_lib.validate(c)
    c = config_lib.default_config()
    c.optimizer = {"lr": 1e-3}
    with pytest.raises(config_lib.ConfigError, match=r"config.optimizer=.*unknown field"):
        config_lib.validate(c)
    c = config_lib.default_config()
    c.data.task.params.p = 13  # task knobs are free-form
    config_lib.validate(c)


def test_vocab_smaller_than_the_data_is_an_error():
    from scaling import validation

    c = config_lib.default_config()
    c.model.vocab_size = 256
    config_lib.validate(c)  # a model of any vocabulary is a valid model ...
    with pytest.raises(config_lib.ConfigError, match=r"config.model.vocab_size=256: is smaller "
                       r"than the 259 ids of the byte tokenizer"):
        validation.check_vocab(c)  # ... but not for this data
    c.model.vocab_size = 320
    validation.check_vocab(c)
    c.data.tokenizer, c.data.tokenizer_vocab_size = "bpe", 1024
    with pytest.raises(config_lib.ConfigError, match=r"vocab_size=320.*1024 ids"):
        validation.check_vocab(c)


def test_load_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    with pytest.raises(config_lib.ConfigFileError, match=r"config.json: not found"):
        config_lib.load_json(path)
    path.write_text("{garbage")
    with pytest.raises(config_lib.ConfigFileError, match=r"config.json: is not valid JSON"):
        config_lib.load_json(path)
    path.write_text(json.dumps({"model": {"d_modle": 3}}))
    with pytest.raises(config_lib.ConfigFileError, match=r"config.json: config.model.d_modle=3"):
        config_lib.load_json(path)
    path.write_text(config_lib.to_json(config_lib.default_config()))
    assert config_lib.load_json(path).model.d_model == 64
