"""Turning an ml_collections experiment config into checked settings.

`validate(config)` runs before anything is built or compiled and raises `ValueError`
naming the offending field (`model.num_heads`, `phd.variant`, ...) and its value.
"""

from __future__ import annotations

import dataclasses
import json

import ml_collections

from phd_jax import attention as attention_lib
from phd_jax.layers import DTYPES
from phd_jax.masks import PHDSpec, parse_variant
from phd_jax.model import NORM_STYLES, REMAT_POLICIES, ModelConfig

SCHEDULES = ("cosine", "linear", "wsd")


def phd_spec(config) -> PHDSpec:
  try:
    return parse_variant(config.phd.variant, window_unit=config.phd.window_unit,
                         positions=config.phd.positions)
  except ValueError as e:
    raise ValueError(f"phd.variant={config.phd.variant!r}: {e}") from None


def model_config(config) -> ModelConfig:
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = set(config.model.keys()) - fields
  if unknown:
    raise ValueError(f"unknown model fields: {sorted('model.' + u for u in unknown)}")
  return ModelConfig(**config.model.to_dict())


def _positive(config, *names):
  for name in names:
    value = config
    for part in name.split("."):
      value = value[part]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name} must be a positive integer; got {value!r}")


def _one_of(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"{name} must be one of {sorted(allowed)}; got {value!r}")


def validate(config) -> None:
  """Raise ValueError naming the first field that cannot work."""
  phd_spec(config)
  m = config.model
  model_config(config)
  _positive(config, "model.vocab_size", "model.d_model", "model.num_layers",
            "model.num_heads", "model.num_kv_heads", "model.head_dim", "model.mlp_dim",
            "seq_len", "batch_size", "microbatches", "num_steps", "log_every")
  if m.num_heads % m.num_kv_heads:
    raise ValueError(f"model.num_heads={m.num_heads} must be a multiple of "
                     f"model.num_kv_heads={m.num_kv_heads}")
  if m.head_dim % 2:
    raise ValueError(f"model.head_dim={m.head_dim} must be even (RoPE rotates pairs)")
  _one_of("model.norm_style", m.norm_style, NORM_STYLES)
  _one_of("model.dtype", m.dtype, DTYPES)
  _one_of("model.remat", m.remat, REMAT_POLICIES)
  try:
    attention_lib.resolve(m.attention_impl)
  except ValueError as e:
    raise ValueError(f"model.{e}") from None
  if config.batch_size % config.microbatches:
    raise ValueError(f"batch_size={config.batch_size} must be divisible by "
                     f"microbatches={config.microbatches}")
  o = config.optim
  _one_of("optim.schedule", o.schedule, SCHEDULES)
  if not o.lr > 0:
    raise ValueError(f"optim.lr must be > 0; got {o.lr}")
  if o.warmup_steps < 0 or o.warmup_steps > config.num_steps:
    raise ValueError(f"optim.warmup_steps={o.warmup_steps} must lie in [0, num_steps="
                     f"{config.num_steps}]")
  if not 0.0 <= o.min_lr_ratio <= 1.0:
    raise ValueError(f"optim.min_lr_ratio must lie in [0, 1]; got {o.min_lr_ratio}")
  if not 0.0 < o.decay_fraction <= 1.0:
    raise ValueError(f"optim.decay_fraction must lie in (0, 1]; got {o.decay_fraction}")


def to_json(config) -> str:
  """The resolved config as JSON (saved with checkpoints and logs)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))
