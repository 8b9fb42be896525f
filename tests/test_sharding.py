"""Mesh construction, the logical-axis rules and the settings checks, on 8 fake devices."""

import jax
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from phd_jax import sharding, state, train
from run_helpers import small_config


@pytest.mark.parametrize("axes, expected", [
    ((-1, 1, 1), (8, 1, 1)), ((1, -1, 1), (1, 8, 1)), ((2, -1, 2), (2, 2, 2)),
    ((1, 4, -1), (1, 4, 2)), ((2, 2, 2), (2, 2, 2)),
])
def test_mesh_fills_minus_one(axes, expected):
  mesh = sharding.make_mesh(small_config(mesh=axes))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.shape.values()) == expected
  assert mesh.axis_types == (AxisType.Auto,) * 3
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def param_specs(mesh_shape):
  config = small_config(mesh=mesh_shape)
  abstract = state.abstract_state(config, sharding.make_mesh(config))
  return abstract, {jax.tree_util.keystr(path): leaf.sharding.spec
                    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract.params)}


def test_parameters_and_optimizer_state_follow_the_rules():
  abstract, specs = param_specs((2, 2, 2))
  # scanned layers: every block parameter has a leading, replicated "layers" axis
  block = "['blocks']"
  expected = {
      f"{block}['attn']['wq'].value": P(None, "fsdp", "tensor", None),
      f"{block}['attn']['wk'].value": P(None, "fsdp", "tensor", None),
      f"{block}['attn']['wo'].value": P(None, "tensor", None, "fsdp"),
      f"{block}['attn']['q_norm']['scale'].value": P(None, "tensor", None),
      f"{block}['mlp']['gate'].value": P(None, "fsdp", "tensor"),
      f"{block}['mlp']['down'].value": P(None, "tensor", "fsdp"),
      f"{block}['attn_norm']['scale'].value": P(None, None),
      "['embed']['table'].value": P("tensor", "fsdp"),
      "['lm_head'].value": P("fsdp", "tensor"),
      "['final_norm']['scale'].value": P(None),
  }
  for name, spec in expected.items():
    assert specs[name] == spec, name
  wq = abstract.params["blocks"]["attn"]["wq"]
  num_layers = wq.shape[0]
  assert wq.sharding.shard_shape(wq.shape) == (num_layers, 32 // 2, 4 // 2, 8)
  # both Adam moments are laid out like the parameters; the step count is replicated
  adam = abstract.opt_state[1][0]
  for moment in (adam.mu, adam.nu):
    assert jax.tree.map(lambda x: x.sharding, moment) == jax.tree.map(lambda x: x.sharding,
                                                                     abstract.params)
  assert abstract.step.sharding.is_fully_replicated
  assert adam.count.sharding.is_fully_replicated


def test_data_parallel_mesh_replicates_parameters():
  abstract, specs = param_specs((8, 1, 1))
  assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(abstract.params))
  sharding.check_not_replicated(abstract.params, abstract.step.sharding.mesh, limit=1)  # allowed


def test_large_replicated_parameter_is_caught():
  abstract, _ = param_specs((1, 8, 1))
  mesh = abstract.step.sharding.mesh
  sharding.check_not_replicated(abstract.params, mesh)  # the model's own params are split
  with pytest.raises(ValueError, match=r"\['scale'\].*replicated"):
    sharding.check_not_replicated(abstract.params, mesh, limit=32)  # norms are d_model = 32


def test_unknown_logical_axis_is_an_error():
  with pytest.raises(ValueError, match="experts"):
    sharding.logical_to_spec(("experts", "embed"))


@pytest.mark.parametrize("overrides, field", [
    ({"mesh.tensor": 3}, "'tensor': 3"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "mesh.data/fsdp/tensor"),
    ({"mesh.dcn_data": 0}, "mesh.dcn_data"),
    ({"mesh.dcn_fsdp": 3}, "mesh.dcn"),
    ({"mesh.fsdp": 0}, "mesh.fsdp"),
    ({"batch_size": 12}, "batch_size=12"),
    ({"microbatches": 3}, "microbatches=3"),
    ({"microbatches": 2}, "data-parallel devices"),
    ({"mesh.data": 2, "mesh.tensor": 4}, "kv_heads"),
    ({"mesh.data": 1, "mesh.fsdp": 8, "model.d_model": 36}, "embed"),
    ({"profile_steps": "5"}, "profile_steps"),
    ({"profile_steps": "5:30"}, "profile_steps"),  # beyond num_steps = 20
])
def test_bad_settings_fail_before_compiling(overrides, field, tmp_path, monkeypatch):
  config = small_config(mesh=(8, 1, 1), **overrides)

  def no_compiling(*args, **kwargs):
    raise AssertionError("compiled before validating the settings")
  monkeypatch.setattr(jax, "jit", no_compiling)
  with pytest.raises(ValueError, match=field.replace(".", r"\.").replace("[", r"\[")):
    train.train(config, str(tmp_path))
