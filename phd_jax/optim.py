"""AdamW with OLMo2's settings, learning-rate schedules and global-norm clipping.

Schedules (all with linear warmup to `optim.lr` over `optim.warmup_steps` updates, the
first update already at lr / warmup_steps):
  cosine  half-cosine from lr down to min_lr_ratio * lr at num_steps
  linear  straight line from lr down to min_lr_ratio * lr at num_steps
  wsd     warmup-stable-decay: lr until the last decay_fraction of the steps, then a
          straight line down to min_lr_ratio * lr at num_steps
Weight decay skips norm scales and the token embedding, as OLMo2 does (and biases).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax


def _decay_progress(config, step):
  """0 at the start of the decay phase, 1 at num_steps (clipped)."""
  o = config.optim
  if o.schedule == "wsd":
    start = max(o.warmup_steps, round(config.num_steps * (1.0 - o.decay_fraction)))
  else:
    start = o.warmup_steps
  length = max(config.num_steps - start, 1)
  return jnp.clip((step - start) / length, 0.0, 1.0)


def make_schedule(config):
  """`step -> learning rate` (jnp, traceable); step counts applied updates from 0."""
  o = config.optim
  floor = o.lr * o.min_lr_ratio

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = _decay_progress(config, step)
    if o.schedule == "cosine":
      decayed = floor + (o.lr - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    else:  # linear, and the decay phase of wsd
      decayed = o.lr - (o.lr - floor) * progress
    if o.warmup_steps == 0:
      return decayed
    warm = o.lr * jnp.minimum(step + 1.0, o.warmup_steps) / o.warmup_steps
    return jnp.where(step < o.warmup_steps, warm, decayed)

  return schedule


def _names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def is_norm_scale(path) -> bool:
  """An RMSNorm scale (block norms, final norm and the QK-norms)."""
  return "scale" in _names(path)


def is_decayed(path) -> bool:
  """Weight decay applies to the projection matrices only: not to norm scales, biases (a
  PLT gate's) nor the embedding table."""
  names = _names(path)
  return names[0] != "embed" and not is_norm_scale(path) and "bias" not in names


def decay_mask(params):
  return jax.tree_util.tree_map_with_path(lambda path, _: is_decayed(path), params)


def make_optimizer(config) -> optax.GradientTransformation:
  o = config.optim
  adamw = optax.adamw(make_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                      weight_decay=o.weight_decay, mask=decay_mask)
  if o.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw)
  return adamw


def param_counts(params) -> tuple[int, int]:
  """(all parameters, those in norm scales)."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return (sum(math.prod(x.shape) for _, x in leaves),
          sum(math.prod(x.shape) for path, x in leaves if is_norm_scale(path)))

