"""Config files load and validate; paper shapes have the paper's parameter counts."""

import importlib
import pathlib

import jax
import pytest
from flax import nnx

from phd_jax import config as config_lib
from phd_jax.model import Transformer

CONFIG_FILES = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                      if p.stem != "__init__")


def load(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def count_params(cfg):
  abstract = jax.eval_shape(lambda: nnx.state(
      Transformer(config_lib.model_config(cfg), config_lib.phd_spec(cfg), rngs=nnx.Rngs(0)),
      nnx.Param))
  return sum(x.size for x in jax.tree.leaves(abstract))


@pytest.mark.parametrize("name", CONFIG_FILES)
@pytest.mark.parametrize("variant", [None, "Vanilla", "PHD-3", "PHD-SWA-2-16-inf",
                                     "PHD-CSWA-3-16-32"])
def test_every_config_validates(name, variant):
  cfg = load(name, variant)
  config_lib.validate(cfg)
  if variant:
    assert config_lib.phd_spec(cfg) == config_lib.phd_spec(load(name, variant))
    assert cfg.phd.variant == variant


@pytest.mark.parametrize("name,expected", [("olmo2_1b", 1.18e9), ("olmo2_550m", 0.551e9),
                                           ("olmo2_151m", 0.151e9)])
def test_paper_parameter_counts(name, expected):
  assert abs(count_params(load(name)) - expected) / expected < 0.015


def test_phd_adds_no_parameters():
  assert count_params(load("olmo2_1b", "Vanilla")) == count_params(load("olmo2_1b", "PHD-3"))


@pytest.mark.parametrize("field,value,message", [
    ("model.num_heads", 5, "model.num_kv_heads"),
    ("model.d_model", 0, "model.d_model"),
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
    ("seq_len", -4, "seq_len"),
])
def test_bad_fields_are_named(field, value, message):
  cfg = load("tiny")
  cfg.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    config_lib.validate(cfg)


def test_json_round_trip():
  cfg = load("olmo2_1b", "PHD-CSWA-2-16-32")
  again = config_lib.from_json(config_lib.to_json(cfg))
  assert again.to_dict() == cfg.to_dict()
