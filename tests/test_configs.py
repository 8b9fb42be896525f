"""Config files load from any path and validate; paper shapes have the paper's parameter
counts; every setting training would refuse is refused by `validate`, naming it."""

import jax
import pytest
from flax import nnx

from phd_jax import config as config_lib
from phd_jax.model import Transformer
from run_helpers import REPO_ROOT, TINY_CONFIG

CONFIG_FILES = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.py")
                      if p.stem != "__init__")
PAPER_CONFIGS = [name for name in CONFIG_FILES if name.startswith("olmo2_")]


def load(name, variant=None):
  return config_lib.load_config(REPO_ROOT / "configs" / f"{name}.py", variant)


def count_params(cfg):
  abstract = jax.eval_shape(lambda: nnx.state(
      Transformer(config_lib.model_config(cfg), config_lib.phd_spec(cfg), rngs=nnx.Rngs(0)),
      nnx.Param))
  return sum(x.size for x in jax.tree.leaves(abstract))


@pytest.mark.parametrize("name", CONFIG_FILES)
@pytest.mark.parametrize("variant", [None, "Vanilla", "PHD-3", "PHD-SWA-2-16-inf",
                                     "PHD-CSWA-3-16-32", "PLT-2-16"])
def test_every_config_validates(name, variant):
  cfg = load(name, variant)
  config_lib.validate(cfg, files=False)  # every setting as shipped; the data may be absent
  if variant:
    assert cfg.phd.variant == variant


@pytest.mark.parametrize("name", ["repro", "mechanism"])
def test_the_loop_experiments_train_plt_as_released_and_leave_phd_alone(name):
  plt = config_lib.phd_spec(load(name, "PLT-2-4"))
  assert (plt.emb_scale, plt.hidden_scale, plt.gate) == (0.707, 0.053, "hidden")
  for variant in ("Vanilla", "PHD-CSWA-2-4-8"):  # their configs as before PLT existed
    assert load(name, variant).phd.to_dict() == load("tiny", variant).phd.to_dict()


def test_path_with_variant_suffix_equals_variant_argument():
  path = TINY_CONFIG
  assert (config_lib.load_config(f"{path}:PHD-CSWA-2-4-8").to_dict()
          == config_lib.load_config(path, "PHD-CSWA-2-4-8").to_dict())


def test_a_config_file_outside_the_checkout_loads(tmp_path, monkeypatch):
  (tmp_path / "mine.py").write_text(
      "from phd_jax import defaults\n\n"
      "def get_config(variant=None):\n"
      "  c = defaults.get_config(variant)\n"
      "  c.model.num_layers = 3\n"
      "  return c\n")
  monkeypatch.chdir(tmp_path)
  cfg = config_lib.load_config("mine.py:PHD-2")
  assert cfg.model.num_layers == 3 and cfg.phd.variant == "PHD-2"


def test_a_missing_config_file_is_named(tmp_path):
  with pytest.raises(config_lib.ConfigError, match=f"config file {tmp_path}/nope.py does not "
                     "exist"):
    config_lib.load_config(tmp_path / "nope.py")


@pytest.mark.parametrize("name,expected", [("olmo2_1b", 1.18e9), ("olmo2_550m", 0.551e9),
                                           ("olmo2_151m", 0.151e9)])
def test_paper_parameter_counts(name, expected):
  assert abs(count_params(load(name)) - expected) / expected < 0.015


def test_phd_adds_no_parameters():
  assert count_params(load("olmo2_1b", "Vanilla")) == count_params(load("olmo2_1b", "PHD-3"))


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_name_their_tokenizer_and_corpus(name, tmp_path, monkeypatch):
  """The 50,304-id vocabulary implies a GPT-NeoX-sized tokenizer.json; without it (or
  without the prepared corpus) validation refuses, naming the field and the path."""
  cfg = load(name)
  assert cfg.data.source == "tfds" and cfg.data.name and cfg.data.tokenizer == "hf"
  assert cfg.data.tokenizer_path.endswith("tokenizer.json")
  monkeypatch.chdir(tmp_path)  # where neither file exists
  with pytest.raises(config_lib.ConfigError,
                     match=f"data.tokenizer_path='{cfg.data.tokenizer_path}': no such"):
    config_lib.validate(cfg)
  config_lib.validate(cfg, files=False)  # what the dry run sizes needs no file
  with pytest.raises(config_lib.ConfigError) as refused:
    config_lib.check_files(cfg)
  # every missing file at once, so that a pod's files can be gathered in one go
  assert f"data.tokenizer_path='{cfg.data.tokenizer_path}': no such" in str(refused.value)
  assert f"no such prepared dataset in {cfg.data.data_dir}" in str(refused.value)


@pytest.mark.parametrize("field,value,message", [
    ("model.num_heads", 5, "model.num_kv_heads"),
    ("model.d_model", 0, "model.d_model must be a positive integer; got 0"),
    ("model.head_dim", 31, "model.head_dim"),
    ("model.norm_style", "post", "model.norm_style"),
    ("model.dtype", "float16", "model.dtype"),
    ("model.attention_impl", "magic", "attention_impl"),
    ("model.remat", "some", "model.remat"),
    ("phd.variant", "PHD-CSWA-2-0-4", "phd.variant"),
    ("phd.window_unit", "bytes", "window_unit"),
    ("microbatches", 3, "microbatches"),
    ("optim.schedule", "step", "optim.schedule"),
    ("optim.warmup_steps", 10**9, "optim.warmup_steps"),
    ("optim.b1", 1.0, r"optim.b1 must lie in \[0.0, 1.0\); got 1.0"),
    ("optim.b2", 1.5, r"optim.b2 must lie in \[0.0, 1.0\); got 1.5"),
    ("optim.weight_decay", -1.0, "optim.weight_decay must lie in"),
    ("optim.grad_clip", -1.0, "optim.grad_clip must lie in"),
    ("eval_every", -1, "eval_every must be an integer >= 0; got -1"),
    ("eval_batches", 0, "eval_batches must be a positive integer; got 0"),
    ("seq_len", -4, "seq_len"),
    ("checkpoint.keep", 0, "checkpoint.keep must be a positive integer; got 0"),
    ("checkpoint.every", -1, "checkpoint.every"),
    ("profile_steps", "abc", "profile_steps must look like 'START:STOP'; got 'abc'"),
    ("profile_steps", "5:400", "profile_steps='5:400' needs 0 <= START < STOP <= num_steps"),
    ("data.source", "web", "data.source"),
    ("data.tokenizer", "bpe", "data.tokenizer"),
    ("data.eval_split", "test", "data.eval_split='test': the stdlib corpus has the splits"),
    ("mesh.tensor", 3, "not divisible by the fixed axes' product 3"),
    ("batch_size", 12, "data-parallel devices"),
])
def test_bad_fields_are_named(field, value, message):
  cfg = load("tiny")  # the stdlib corpus with byte tokens: no file is read
  cfg.update_from_flattened_dict({field: value})
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(cfg)


def test_eval_batches_is_unchecked_without_evaluation():
  cfg = load("tiny")
  cfg.update_from_flattened_dict({"eval_every": 0, "eval_batches": 0})
  config_lib.validate(cfg)


def test_misspelt_fields_get_the_closest_names():
  cfg = load("tiny")
  assert config_lib.unknown_field_message(cfg, "optim.lr") is None
  assert "did you mean optim.lr" in config_lib.unknown_field_message(cfg,
                                                                      "optim.learning_rate")
  assert "did you mean optim.lr" in config_lib.unknown_field_message(cfg, "optm.lr")
  assert "did you mean optim.weight_decay" in config_lib.unknown_field_message(
      cfg, "optim.weight_decy")


def test_json_round_trip():
  cfg = load("olmo2_1b", "PHD-CSWA-2-16-32")
  again = config_lib.from_json(config_lib.to_json(cfg))
  assert again.to_dict() == cfg.to_dict()
