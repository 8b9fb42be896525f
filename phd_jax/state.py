"""The train state, its shardings, and the one way to build a model from a config or a
checkpoint.

The state is created already sharded (`jax.eval_shape`, then `jit` with `out_shardings`),
so no full copy of the parameters ever sits on one host. `load_model` restores a saved
model onto any mesh; training (warm starts), evaluation, generation, the lm-eval model and
the benchmarks all load through it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath
from flax import nnx, struct
from jax.sharding import Mesh

from phd_jax import checkpoint, sharding
from phd_jax import config as config_lib
from phd_jax.model import Transformer
from phd_jax.optim import make_optimizer
from phd_jax.plt import model_class


class TrainState(struct.PyTreeNode):
  step: jax.Array  # int32 scalar: optimizer updates applied so far
  params: nnx.State  # the model's nnx.Param
  opt_state: optax.OptState


def new_model(config, seed: int | None = None) -> Transformer:
  """A freshly initialised model of `config` (seed: `config.seed` unless given): a
  Transformer, or for a PLT variant its looped subclass."""
  spec = config_lib.phd_spec(config)
  return model_class(spec)(config_lib.model_config(config), spec,
                           rngs=nnx.Rngs(params=config.seed if seed is None else seed))


def _init_fn(config, tx):
  def init():
    params = nnx.state(new_model(config), nnx.Param)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return init


def graphdef(config) -> nnx.GraphDef:
  return nnx.split(nnx.eval_shape(lambda: new_model(config)))[0]


def model_from_params(config, params) -> Transformer:
  return nnx.merge(graphdef(config), params)


def state_shardings(config, mesh):
  """NamedShardings of the TrainState (a TrainState of shardings) from the logical rules."""
  shapes = jax.eval_shape(_init_fn(config, make_optimizer(config)))
  return sharding.tree_shardings(shapes, mesh)


def abstract_state(config, mesh) -> TrainState:
  """ShapeDtypeStructs carrying their shardings: the target of a checkpoint restore.

  A model shape the mesh cannot split is a ConfigError naming the parameter.
  """
  shapes = jax.eval_shape(_init_fn(config, make_optimizer(config)))
  try:
    shardings = sharding.tree_shardings(shapes, mesh)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, shardings)
    sharding.check_not_replicated(abstract.params, mesh)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  return abstract


def init_state(config, mesh) -> tuple[nnx.GraphDef, TrainState]:
  """A fresh TrainState, each array created directly on its shards."""
  abstract_state(config, mesh)  # validates the shardings before compiling anything
  init = jax.jit(_init_fn(config, make_optimizer(config)),
                 out_shardings=state_shardings(config, mesh))
  return graphdef(config), init()


class LoadedModel(NamedTuple):
  model: Transformer
  config: ml_collections.ConfigDict  # the config the model was built from
  mesh: Mesh  # where its parameters live
  folder: epath.Path  # the checkpoint or export read


def load_model(path, mesh=None, *, config=None) -> LoadedModel:
  """A saved model with its parameters on a mesh (the optimizer state is not read).

  Args:
    path: a workdir (its newest complete step), its `checkpoints/` directory, a step
      folder or an export.
    mesh: a Mesh; or (data, fsdp, tensor) sizes over this process's devices, -1 filling;
      or None: the first device alone.
    config: the config whose model receives the parameters (a warm start passes its own
      run's); default: the one saved with the checkpoint.
  Returns:
    LoadedModel(model, config, mesh, folder).
  """
  folder = checkpoint.resolve(path)
  if config is None:
    config = checkpoint.saved_config(folder)
  if mesh is None:
    mesh = sharding.make_mesh(config, jax.devices()[:1], sizes=(1, 1, 1))
  elif not isinstance(mesh, Mesh):
    mesh = sharding.make_mesh(config, sizes=tuple(mesh))
  params = checkpoint.load_params(folder, abstract_state(config, mesh).params)
  return LoadedModel(model_from_params(config, params), config, mesh, folder)
