"""Scanned layers: equal to the per-layer loop, layouts convert both ways (in memory and
through checkpoints), sharding works, and the program does not grow with depth."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from phd_jax import checkpoint, sharding
from phd_jax import state as state_lib
from phd_jax.layers import constrain
from phd_jax.loss import next_token_loss
from phd_jax.masks import parse_variant
from phd_jax.model import ModelConfig, Transformer, is_stacked, stack_layers, unstack_layers
from run_helpers import tiny_config

CFG = ModelConfig(vocab_size=61, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=48, rope_theta=10_000.0)
VARIANTS = ["Vanilla", "PHD-3", "PHD-SWA-2-4-inf", "PHD-CSWA-3-4-4"]


def make(variant, scan_layers=True, seed=0, **cfg_fields):
  cfg = dataclasses.replace(CFG, scan_layers=scan_layers, **cfg_fields)
  return Transformer(cfg, parse_variant(variant), rngs=nnx.Rngs(seed))


def tokens(B=2, T=11, seed=1):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, CFG.vocab_size)


@jax.jit
def _loss_logits_grads(graphdef, params, toks):
  def loss_fn(params):
    logits = nnx.merge(graphdef, params)(toks)
    return next_token_loss(logits, toks)[0], logits
  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def loss_logits_grads(model, toks):
  (loss, logits), grads = _loss_logits_grads(*nnx.split(model, nnx.Param), toks)
  return loss, logits, grads


def assert_trees_close(a, b, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("norm_style,remat", [("reordered", "none"), ("pre", "full")])
def test_scanned_equals_looped(variant, norm_style, remat):
  """Same weights (the scanned model's, unstacked): same logits, loss and gradients."""
  scanned = make(variant, True, norm_style=norm_style, remat=remat)
  looped = make(variant, False, seed=1, norm_style=norm_style, remat=remat)
  nnx.update(looped, unstack_layers(nnx.state(scanned, nnx.Param)))
  toks = tokens()
  loss_s, logits_s, grads_s = loss_logits_grads(scanned, toks)
  loss_l, logits_l, grads_l = loss_logits_grads(looped, toks)
  np.testing.assert_allclose(logits_s, logits_l, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(loss_s, loss_l, rtol=1e-6)
  assert_trees_close(grads_s, stack_layers(grads_l))
  assert np.abs(np.asarray(grads_s["blocks"]["attn"]["wq"][-1])).max() > 0  # every layer


@pytest.mark.slow
def test_remat_dots_equals_no_remat():
  plain, dots = make("PHD-CSWA-3-4-4"), make("PHD-CSWA-3-4-4", remat="dots")
  toks = tokens()
  for a, b in zip(loss_logits_grads(plain, toks), loss_logits_grads(dots, toks)):
    assert_trees_close(a, b)


def test_stacked_parameters_carry_the_layer_axis():
  params = nnx.state(make("PHD-3"), nnx.Param)
  wq = params["blocks"]["attn"]["wq"]
  assert wq.shape == (CFG.num_layers, CFG.d_model, CFG.num_heads, CFG.head_dim)
  assert wq.get_metadata()["out_sharding"] == ("layers", "embed", "q_heads", "head_dim")
  # each layer starts from its own random draw
  assert not np.allclose(np.asarray(wq[0]), np.asarray(wq[1]))


@pytest.mark.parametrize("pure", [False, True])
def test_stack_unstack_round_trip_is_exact(pure):
  stacked_state = nnx.state(make("PHD-3"), nnx.Param)
  looped_state = nnx.state(make("PHD-3", False), nnx.Param)
  convert = nnx.to_pure_dict if pure else (lambda x: x)
  stacked = convert(stacked_state)
  unstacked = unstack_layers(stacked)
  # the per-layer tree is the looped model's layout (keys, Variable metadata)
  assert (jax.tree.structure(unstacked) ==
          jax.tree.structure(convert(looped_state)))
  assert not is_stacked(unstacked) and is_stacked(stacked)
  again = stack_layers(unstacked)
  assert jax.tree.structure(again) == jax.tree.structure(stacked)
  for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(stacked), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  with pytest.raises(ValueError, match="already stacked"):
    stack_layers(stacked)


def _abstract(params, mesh):
  """ShapeDtypeStructs of `params` on the shardings the logical rules give."""
  shardings = sharding.tree_shardings(params, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      params, shardings)


def _mesh(shape):
  return jax.make_mesh(shape, sharding.AXES, axis_types=(AxisType.Auto,) * 3)


def _config(scan_layers):
  c = tiny_config("PHD-CSWA-2-4-8")
  c.model.update(vocab_size=64, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2,
                 head_dim=8, mlp_dim=32, scan_layers=scan_layers)
  return c


@pytest.mark.parametrize("saved_scanned", [True, False])
def test_exported_params_restore_into_the_other_layout(tmp_path, saved_scanned):
  saved = nnx.state(state_lib.new_model(_config(saved_scanned)), nnx.Param)
  path = checkpoint.export_params(tmp_path / "export", saved, _config(saved_scanned))
  mesh = _mesh((1, 2, 2))  # sharded target: the conversion lands on its shardings
  target = nnx.eval_shape(lambda: state_lib.new_model(_config(not saved_scanned)))
  target = nnx.state(target, nnx.Param)
  abstract = _abstract(target, mesh)
  restored = checkpoint.load_params(path, abstract)
  expected = unstack_layers(saved) if saved_scanned else stack_layers(saved)
  assert_trees_close(restored, expected, atol=0)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract), strict=True):
    assert got.sharding.is_equivalent_to(want.sharding, got.ndim)


def test_train_state_resumes_across_layouts(tmp_path):
  """Optimizer moments mirror the params: a looped run's state resumes scanned."""
  tx = optax.adam(1e-2)
  params = nnx.state(state_lib.new_model(_config(False)), nnx.Param)
  moments = jax.tree.map(lambda x: x + 1.0, params)  # distinct from the params
  opt_state = tx.init(params)
  opt_state = (opt_state[0]._replace(mu=moments, nu=params),) + opt_state[1:]
  state = state_lib.TrainState(step=jnp.int32(7), params=params, opt_state=opt_state)
  with checkpoint.Checkpointer(tmp_path, _config(False)) as ckpt:
    ckpt.save(7, state, {"position": 0}, force=True)
    ckpt.wait_until_finished()
  scanned_params = nnx.state(nnx.eval_shape(lambda: state_lib.new_model(_config(True))), nnx.Param)
  target = state_lib.TrainState(step=jnp.int32(0), params=scanned_params,
                                opt_state=tx.init(scanned_params))
  abstract = _abstract(target, _mesh((2, 2, 1)))
  with checkpoint.Checkpointer(tmp_path, _config(True)) as ckpt:
    restored, data_state = ckpt.restore(abstract)
  assert data_state == {"position": 0} and int(restored.step) == 7
  assert_trees_close(restored, stack_layers(state), atol=0)


@pytest.fixture(scope="module")
def single_device_grads():
  model = make("PHD-CSWA-3-4-4", vocab_size=64)  # the vocabulary splits over tensor
  return model, loss_logits_grads(model, tokens(B=4, T=16))


@pytest.mark.slow
def test_sharded_scanned_model_equals_one_device(single_device_grads):
  model, (loss, logits, grads) = single_device_grads
  mesh = _mesh((2, 2, 2))
  graphdef, params = nnx.split(model, nnx.Param)
  params = jax.device_put(params, sharding.tree_shardings(params, mesh))
  wq = params["blocks"]["attn"]["wq"]
  assert wq.sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
  toks = jax.device_put(tokens(B=4, T=16), sharding.batch_sharding(mesh))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.RULES):
    (got_loss, got_logits), got_grads = jax.jit(jax.value_and_grad(
        lambda p: (lambda lg: (next_token_loss(lg, toks)[0], lg))(
            nnx.merge(graphdef, p)(toks)), has_aux=True))(params)
  np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
  np.testing.assert_allclose(got_logits, logits, atol=1e-5)
  assert_trees_close(got_grads, grads, atol=1e-6)


def stablehlo_lines(num_layers, scan_layers):
  model = make("PHD-CSWA-3-4-4", scan_layers, num_layers=num_layers)
  graphdef, params = nnx.split(model, nnx.Param)
  toks = tokens(B=1, T=64)
  fn = jax.value_and_grad(lambda p: next_token_loss(nnx.merge(graphdef, p)(toks), toks)[0])
  return len(jax.jit(fn).lower(params).as_text().splitlines())


@pytest.mark.slow
def test_program_does_not_grow_with_depth_when_scanned():
  two, six = stablehlo_lines(2, True), stablehlo_lines(6, True)
  assert abs(six - two) < 0.03 * two, (two, six)
  # the loop holds every layer: the measure tells them apart
  assert stablehlo_lines(6, False) > 2 * stablehlo_lines(2, False)


def test_constrain_refuses_unknown_logical_axes():
  mesh = _mesh((8, 1, 1))
  x = jnp.zeros((8, 4))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.RULES):
    with pytest.raises(ValueError, match="activation_btach"):
      jax.jit(lambda x: constrain(x, ("activation_btach", None)))(x)
    y = jax.jit(lambda x: constrain(x, ("activation_batch", None)))(x)
  assert y.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("data")), 2)
