"""The train step and loop: sharded steps equal one device, gradient accumulation equals
the whole batch, loss goes down, NaNs stop training, bad settings fail before compiling."""

import json
import math
import os

import jax
import numpy as np
import pytest

from eval_helpers import eval_data_dir
from phd_jax import checkpoint, data, sharding, state, train
from phd_jax.eval import suite
from run_helpers import read_metrics, small_config

# One step on a mesh vs one device: float32 sums in a different order.
LOSS_RTOL, GRAD_ATOL, PARAM_ATOL = 1e-5, 1e-7, 1e-7


def step_config(mesh=(1, 1, 1), **overrides):
  """No clipping, so the first Adam moment is exactly (1 - b1) x the gradient; eps 1e-3
  keeps Adam's first update (~ lr * sign(g)) continuous where g is at rounding level."""
  return small_config(mesh=mesh, **{"optim.grad_clip": 0.0, "optim.eps": 1e-3, **overrides})


def one_step(config, devices=None):
  """(mesh, gradients, state after one step, step metrics) on the first batch."""
  training = train.setup(config, sharding.make_mesh(config, devices))
  new_state, metrics = training.step(training.init(),
                                     training.global_batch(next(data.make_iterator(config))))
  first_moment = new_state.opt_state[0].mu
  grads = jax.tree.map(lambda m: m / (1 - config.optim.b1), first_moment)
  return training.mesh, grads, new_state, metrics


@pytest.fixture(scope="module")
def single_device():
  return one_step(step_config(), jax.devices()[:1])


def assert_trees_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape, remat", [
    ((8, 1, 1), "none"), ((1, 8, 1), "none"), ((2, 2, 2), "none"),
    ((1, 4, 2), "full"),  # rematerialisation must not change the step either
])
def test_sharded_step_equals_one_device(mesh_shape, remat, single_device):
  _, ref_grads, ref_state, ref_metrics = single_device
  mesh, grads, stepped, metrics = one_step(step_config(mesh_shape, **{"model.remat": remat}))
  assert dict(mesh.shape) == dict(zip(sharding.AXES, mesh_shape))
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=LOSS_RTOL)
  np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-4)
  assert_trees_close(grads, ref_grads, GRAD_ATOL)
  assert_trees_close(stepped.params, ref_state.params, PARAM_ATOL)
  assert_trees_close(stepped.opt_state, ref_state.opt_state, PARAM_ATOL)
  assert int(stepped.step) == 1
  # the updated state keeps the shardings the rules give
  expected = state.abstract_state(step_config(mesh_shape, **{"model.remat": remat}), mesh)
  for got, want in zip(jax.tree.leaves(stepped), jax.tree.leaves(expected), strict=True):
    assert got.sharding.is_equivalent_to(want.sharding, got.ndim), (got.sharding, want.sharding)


@pytest.mark.slow
def test_gradient_accumulation_equals_whole_batch():
  """4 microbatches of 8 rows (one per device) vs one pass over the 32 rows."""
  whole = step_config((8, 1, 1), batch_size=32)
  _, grads, stepped, metrics = one_step(whole)
  _, acc_grads, acc_state, acc_metrics = one_step(step_config((8, 1, 1), batch_size=32,
                                                              microbatches=4))
  np.testing.assert_allclose(acc_metrics["loss"], metrics["loss"], rtol=LOSS_RTOL)
  np.testing.assert_allclose(acc_metrics["targets"], metrics["targets"])
  assert_trees_close(acc_grads, grads, GRAD_ATOL)
  assert_trees_close(acc_state.params, stepped.params, PARAM_ATOL)


@pytest.mark.slow
def test_training_loss_decreases_and_logs(tmp_path):
  config = small_config(mesh=(2, 2, 2), num_steps=40, log_every=10, eval_every=20,
                        eval_batches=2, seq_len=32, batch_size=16)
  final = train.train(config, str(tmp_path))
  rows = read_metrics(tmp_path)
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [10, 20, 30, 40]
  assert [r["step"] for r in rows if "eval_loss" in r] == [20, 40]
  # uniform guessing over the vocabulary costs log(V); a learnt Markov chain much less
  assert train_rows[0]["loss"] < math.log(64) + 0.1
  assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 0.8
  assert final["step"] == 40 and final["loss"] == train_rows[-1]["loss"]
  for key in ("perplexity", "grad_norm", "lr", "tokens_per_s", "copies_per_s", "step_time",
              "model_flops_per_step", "flops_per_s"):
    assert train_rows[-1][key] > 0, key
  assert train_rows[-1]["copies_per_s"] == pytest.approx(2 * train_rows[-1]["tokens_per_s"])
  assert json.load(open(tmp_path / "config.json"))["phd"]["variant"] == config.phd.variant
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))


@pytest.mark.slow
def test_in_loop_task_scores_are_those_of_the_saved_params(tmp_path):
  config = small_config(mesh=(8, 1, 1), num_steps=4, eval_every=4, eval_batches=1,
                        eval_tasks="arc_easy",
                        eval_limit=6, eval_data_dir=eval_data_dir(tmp_path),
                        **{"model.vocab_size": 384, "checkpoint.every": 4})
  train.train(config, str(tmp_path / "run"))
  logged = [r for r in read_metrics(tmp_path / "run") if "eval_loss" in r]
  assert [r["step"] for r in logged] == [4]
  mesh = sharding.make_mesh(config)
  params = checkpoint.load_params(tmp_path / "run", state.abstract_state(config, mesh).params)
  expected = suite.in_loop(state.model_from_params(config, params), config, mesh,
                           tasks=("loss", "arc_easy"), limit=6, data_dir=config.eval_data_dir)
  assert logged[0]["eval_arc_easy"] == pytest.approx(expected["eval/arc_easy"])
  assert logged[0]["eval_loss"] == pytest.approx(expected["eval/loss"], rel=1e-5)


def test_missing_in_loop_task_fails_at_startup(tmp_path):
  config = small_config(mesh=(8, 1, 1), eval_every=4, eval_tasks="arc_easy",
                        eval_data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="eval_tasks='arc_easy'.*no file"):
    train.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_non_finite_loss_stops_at_its_step(tmp_path):
  """A huge learning rate blows the parameters up in step 1, so step 2's loss is inf/NaN:
  the error names step 2 (the next log would be at step 5), and of the checkpoints due
  every step only step 1's is written."""
  config = small_config(mesh=(8, 1, 1), num_steps=10, log_every=5,
                        **{"optim.lr": 1e20, "optim.warmup_steps": 0, "checkpoint.every": 1})
  with pytest.raises(FloatingPointError, match="at step 2;"):
    train.train(config, str(tmp_path))
  assert read_metrics(tmp_path) == []
  assert checkpoint.Checkpointer(str(tmp_path), config).latest_step() == 1
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_state(single_device):
  _, ref_grads, _, ref_metrics = single_device
  _, grads, stepped, metrics = one_step(step_config((2, 2, 2), **{"model.dtype": "bfloat16"}))
  assert {x.dtype for x in jax.tree.leaves(stepped)} == {np.dtype("float32"), np.dtype("int32")}
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-2)
  np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=5e-2)
