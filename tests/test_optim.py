"""Schedules against their formulas, weight-decay exclusions and clipping through the real
optimizer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phd_jax import optim, state
from run_helpers import small_config


def schedule_config(kind, **optim_fields):
  c = small_config(num_steps=100)
  c.optim.update({"schedule": kind, "lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1,
                  "decay_fraction": 0.2, **optim_fields})
  return c


def reference_lr(kind, step, lr=1.0, warmup=10, total=100, floor=0.1, decay_fraction=0.2):
  if step < warmup:
    return lr * (step + 1) / warmup
  decay_start = total * (1 - decay_fraction) if kind == "wsd" else warmup
  progress = min(max((step - decay_start) / (total - decay_start), 0.0), 1.0)
  if kind == "cosine":
    return floor + (lr - floor) * (1 + math.cos(math.pi * progress)) / 2
  return lr - (lr - floor) * progress


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd"])
def test_schedules_follow_their_formulas(kind):
  schedule = optim.make_schedule(schedule_config(kind))
  steps = [0, 1, 5, 9, 10, 11, 37, 50, 79, 80, 81, 99, 100, 150]
  got = [float(schedule(s)) for s in steps]
  np.testing.assert_allclose(got, [reference_lr(kind, s) for s in steps], rtol=1e-6)
  assert got[0] == pytest.approx(0.1) and got[4] == pytest.approx(1.0)  # warmup reaches lr
  assert got[-1] == pytest.approx(0.1)  # floor after num_steps


def test_no_warmup_starts_at_peak():
  schedule = optim.make_schedule(schedule_config("cosine", warmup_steps=0))
  assert float(schedule(0)) == pytest.approx(1.0)


def test_weight_decay_skips_norm_scales_and_embedding():
  """With zero gradients AdamW's update is -lr * wd * p exactly where decay applies."""
  c = schedule_config("cosine", warmup_steps=0, weight_decay=0.5, grad_clip=0.0)
  tx = optim.make_optimizer(c)
  shapes = nnx.state(nnx.eval_shape(lambda: state.new_model(small_config())), nnx.Param)
  params = jax.tree.map(lambda s: jnp.full(s.shape, 2.0), shapes)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(zeros, params)
  decay = {jax.tree_util.keystr(path): float(u.flat[0]) for path, u in
           jax.tree_util.tree_leaves_with_path(jax.device_get(updates))}
  undecayed = sorted(name for name, u in decay.items() if u == 0.0)
  assert undecayed == sorted(name for name in decay
                             if "['scale']" in name or name.startswith("['embed']"))
  assert any("q_norm" in name for name in undecayed)
  assert "['embed']['table'].value" in undecayed
  assert all(u == pytest.approx(-1.0 * 0.5 * 2.0) for name, u in decay.items()
             if name not in undecayed)  # lr * wd * p
  assert decay["['lm_head'].value"] != 0.0


@pytest.mark.parametrize("clip, expected", [
    (1.0, [-0.6 / 1.6, -0.8 / 1.8]),  # gradient [30, 40] rescaled to norm 1: [0.6, 0.8]
    (0.0, [-30 / 31, -40 / 41]),
])
def test_global_norm_clipping(clip, expected):
  """Adam's first update is -lr * g / (|g| + eps); eps = 1 makes it depend on g's scale."""
  c = schedule_config("cosine", warmup_steps=0, weight_decay=0.0, grad_clip=clip, eps=1.0)
  tx = optim.make_optimizer(c)
  params = {"w": jnp.zeros(2)}
  updates, _ = tx.update({"w": jnp.array([30.0, 40.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)
