"""The sharded train step and the training loop.

The step is one `jax.jit` with the state's shardings (`phd_jax.state`) in and out and the
old state donated; it scans over microbatches (gradient accumulation equal to the whole
batch) and applies AdamW. `setup` assembles it with its mesh, a fresh state and the batch
placement: the trainer, the benchmarks and the tests all build their steps there. The loop
validates the config before it writes or builds anything (unless `main` did) and locks the
workdir (`phd_jax.workdir`), then resumes from the newest checkpoint that reads back whole
(setting damaged ones aside) after comparing configs, or starts fresh. The data
pipeline, the evaluation suite and the Hugging Face import are imported where they are
used, so that the train step needs neither grain nor TensorFlow Datasets (the accelerator
check runs on images without them).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from phd_jax import checkpoint, sharding, tracking
from phd_jax import config as config_lib
from phd_jax import workdir as workdir_lib
from phd_jax.loss import next_token_loss
from phd_jax.metrics import Progress, Writer
from phd_jax.optim import make_optimizer, make_schedule
from phd_jax.preemption import PreemptionGuard
from phd_jax.state import (TrainState, abstract_state, graphdef, init_state, load_model,
                           state_shardings)

BATCH_KEYS = ("tokens", "segment_ids", "positions")


def _loss_sum(gdef, params, batch, z_loss):
  """Summed next-token loss of a (micro)batch and its number of targets."""
  model = nnx.merge(gdef, params)
  logits_BTV = model(batch["tokens"], batch["segment_ids"], batch["positions"])
  loss, count = next_token_loss(logits_BTV, batch["tokens"], batch["segment_ids"], z_loss)
  return loss * count, count


def loss_and_grads(gdef, params, batch, microbatches, z_loss):
  """Mean loss and gradient over all targets of the batch, accumulated over microbatches.

  Sums (not means) are accumulated, so the result equals one pass over the whole batch.
  Microbatch m takes rows m, m + M, m + 2M, ...: each device keeps its own rows and no
  data moves between devices.
  """
  grad_fn = jax.value_and_grad(functools.partial(_loss_sum, gdef), has_aux=True)
  if microbatches == 1:
    (total, count), grads = grad_fn(params, batch, z_loss)
  else:
    split = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:])
        .swapaxes(0, 1), batch)

    def accumulate(carry, microbatch):
      (total, count), grads = grad_fn(params, microbatch, z_loss)
      return jax.tree.map(jnp.add, carry, (total, count, grads)), None

    zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    (total, count, grads), _ = jax.lax.scan(accumulate, zeros, split)
  denominator = jnp.maximum(count, 1.0)
  return total / denominator, count, jax.tree.map(lambda g: g / denominator, grads)


class TrainStep:
  """`step(state, batch) -> (state, metrics)` on a concrete mesh (set while tracing, so
  activation constraints apply). `jitted` is the bare jitted function, for lowering and
  export under an abstract mesh (`jax.sharding.use_abstract_mesh`)."""

  def __init__(self, jitted, mesh):
    self.jitted, self._mesh = jitted, mesh

  def __call__(self, state, batch):
    with jax.set_mesh(self._mesh):
      return self.jitted(state, batch)


def make_train_step(config, mesh, gdef) -> TrainStep:
  """The train step, jitted over the mesh with the old state donated."""
  tx, schedule = make_optimizer(config), make_schedule(config)

  def step(state: TrainState, batch):
    with nnx.logical_axis_rules(sharding.RULES):
      loss, count, grads = loss_and_grads(gdef, state.params, batch, config.microbatches,
                                          config.optim.z_loss)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                           opt_state=opt_state)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "lr": schedule(state.step), "targets": count}
    return new_state, metrics

  shardings = state_shardings(config, mesh)
  batch_shardings = {k: sharding.batch_sharding(mesh) for k in BATCH_KEYS}
  jitted = jax.jit(step, in_shardings=(shardings, batch_shardings),
                   out_shardings=(shardings, None), donate_argnums=0)
  return TrainStep(jitted, mesh)


class TrainSetup(NamedTuple):
  """What a train step needs, assembled once by `setup`: the trainer, the benchmarks and
  the tests all build their steps through it."""
  config: ml_collections.ConfigDict
  mesh: Mesh
  gdef: nnx.GraphDef
  step: TrainStep

  def init(self) -> TrainState:
    """A fresh state, each array created directly on its shards."""
    return init_state(self.config, self.mesh)[1]

  def global_batch(self, local_batch: dict) -> dict:
    """This process's rows -> global `[batch_size, seq_len]` arrays sharded over the mesh."""
    shape = (self.config.batch_size, self.config.seq_len)
    batch_sharding = sharding.batch_sharding(self.mesh)
    return {k: jax.make_array_from_process_local_data(batch_sharding,
                                                      np.asarray(local_batch[k]), shape)
            for k in BATCH_KEYS}

  def abstract_batch(self) -> dict:
    """A global batch's shapes and shardings: lowering the step needs no data."""
    batch_sharding = sharding.batch_sharding(self.mesh)
    return {k: jax.ShapeDtypeStruct((self.config.batch_size, self.config.seq_len), jnp.int32,
                                    sharding=batch_sharding)
            for k in BATCH_KEYS}


def setup(config, mesh: Mesh | None = None) -> TrainSetup:
  """The train step of `config` on `mesh` (default: the config's over all devices).

  `config` has passed `config.validate` already: each launch validates once (`main`,
  `train`, each benchmark's config), before anything is built.
  """
  mesh = sharding.make_mesh(config) if mesh is None else mesh
  gdef = graphdef(config)
  return TrainSetup(config, mesh, gdef, make_train_step(config, mesh, gdef))


def check_finite(step: int, metrics: dict) -> None:
  """Stop before anything is saved when the loss or gradient is NaN/inf."""
  if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
    raise FloatingPointError(
        f"non-finite loss {metrics['loss']} / grad norm {metrics['grad_norm']} at step {step}; "
        "training stopped and this state was not saved")


def _resume(config, mesh, ckpt, batches, allow_config_change: bool):
  """(state, folder) of the newest checkpoint that reads back whole, or (None, None).

  A step that fails to read back as written is set aside (`<step>.corrupt`) and the
  previous one is tried. Each step's saved config is compared with `config` first
  (`workdir.check_config_changes`).
  """
  def read(folder):
    step = int(folder.name)
    workdir_lib.check_config_changes(ckpt.saved_config(step), config, f"step {step} in "
                                     f"{ckpt.directory}", allow_config_change)
    return ckpt.restore(abstract_state(config, mesh), step)

  newest_first = (ckpt.directory / str(step) for step in iter(ckpt.latest_step, None))
  found = checkpoint.newest_readable(newest_first, read, lambda folder, error: ckpt.set_aside(
      int(folder.name), str(error)))
  if found is None:
    return None, None
  folder, (state, data_state) = found
  batches.set_state(data_state)
  return state, folder


def check_warm_start(config) -> None:
  """`checkpoint.warm_start` (read only when training starts fresh): a phd_jax checkpoint
  that exists, or `hf:DIR` holding a transformers model of the config's shape. A
  ConfigError naming the field otherwise; `train` and the dry run check it before anything
  is written or compiled."""
  path = config.checkpoint.warm_start
  if not path:
    return
  from phd_jax import hf  # pylint: disable=import-outside-toplevel
  from phd_jax.hf import weights  # pylint: disable=import-outside-toplevel
  try:
    if path.startswith(hf.WARM_START_PREFIX):
      hf_dir = path.removeprefix(hf.WARM_START_PREFIX)
      hf.check_model_fields(config, hf_dir)  # config.json: present, and the model's shape
      weights.shard_names(hf_dir)  # the safetensors files it names
    else:
      checkpoint.resolve(path)
  except (OSError, ValueError) as e:
    # checkpoint.* may change on resume (workdir.HARMLESS_FIELDS), hence the remedy
    raise config_lib.ConfigError(
        f"checkpoint.warm_start={path!r}: {e}; a run resuming from its own checkpoints does "
        "not need it: --config.checkpoint.warm_start=''") from None


def _init(training: TrainSetup) -> TrainState:
  """A fresh state, warm-started from another run or a transformers model if asked."""
  config, state = training.config, training.init()
  warm_start = config.checkpoint.warm_start
  if not warm_start:
    return state
  from phd_jax import hf  # pylint: disable=import-outside-toplevel
  if warm_start.startswith(hf.WARM_START_PREFIX):  # a transformers model
    hf_dir = warm_start.removeprefix(hf.WARM_START_PREFIX)
    state = state.replace(params=hf.load_params(hf_dir, config, like=state.params))
  else:
    warm = load_model(warm_start, training.mesh, config=config)
    state = state.replace(params=nnx.state(warm.model, nnx.Param))
  return state


def _evaluate(config, mesh, gdef, params, tasks) -> dict:
  from phd_jax.eval import suite  # pylint: disable=import-outside-toplevel
  metrics = suite.in_loop(nnx.merge(gdef, params), config, mesh, tasks=tasks,
                          limit=config.eval_limit, data_dir=config.eval_data_dir)
  return {name.removeprefix("eval/"): value for name, value in metrics.items()}


def train(config, workdir: str, *, mesh: Mesh | None = None, allow_restart: bool = False,
          allow_config_change: bool = False) -> dict:
  """Train `config` in `workdir`, resuming from its checkpoints.

  `mesh` comes from a caller that validated `config` (`main`); without one, `config` is
  validated here and trains on its mesh over all devices.

  Returns the last logged metrics with `step`, `status` ("trained", "preempted", or
  "complete": nothing left to train) and `restored` (the folder resumed from, or None).
  Raises `workdir.RunRefused` when another run holds the workdir, when the config changes
  the experiment (unless `allow_config_change`), or when checkpoints exist but none reads
  back (unless `allow_restart`: then it starts over from step 0).
  """
  if mesh is None:
    config_lib.validate(config)  # before anything is written or compiled
  check_warm_start(config)
  training = setup(config, mesh)
  with workdir_lib.ProcessZeroLock(workdir), contextlib.ExitStack() as closing:
    return _train_locked(training, workdir, closing, allow_restart, allow_config_change)


def _train_locked(training: TrainSetup, workdir, closing, allow_restart,
                  allow_config_change) -> dict:
  from phd_jax import data  # pylint: disable=import-outside-toplevel
  config, mesh, gdef = training.config, training.mesh, training.gdef
  profile = config_lib.profile_range(config)
  eval_tasks = ("loss",) + config_lib.eval_task_names(config) if config.eval_every else ()
  main_process = jax.process_index() == 0
  ckpt = closing.enter_context(checkpoint.Checkpointer(workdir, config))
  try:
    batches = data.make_iterator(config, split="train")
  except ValueError as e:  # data.train_tokens beyond the split: known once it is tokenized
    raise config_lib.ConfigError(str(e)) from None
  closing.callback(batches.close)
  restriction = batches.restriction  # data.train_tokens: the train split's first documents
  config.data.train_tokens_exact = restriction.tokens if restriction else 0  # config.json's
  if main_process and restriction:
    print(restriction, flush=True)
  state, restored = _resume(config, mesh, ckpt, batches, allow_config_change)
  if state is None and (aside := ckpt.set_aside_folders()) and not allow_restart:
    raise workdir_lib.RunRefused(
        f"no checkpoint in {ckpt.directory} reads back whole (set aside: {', '.join(aside)}); "
        f"pass --allow_restart to train {workdir} again from step 0")
  if main_process:
    workdir_lib.write_config(workdir, config)
    if restored is not None:
      print(f"restored step {int(state.step)} from {restored}", flush=True)
  state = state if state is not None else _init(training)
  start = int(state.step)
  if start >= config.num_steps:
    return {"step": start, "status": "complete", "restored": restored}
  writer = closing.enter_context(Writer(workdir, enabled=main_process,
                                        tracker=tracking.open_wandb(config, workdir)))
  writer.write_hparams(config_lib.flat_fields(config))
  progress = Progress(config, config_lib.model_config(config), config_lib.phd_spec(config),
                      start, enabled=main_process)
  preemption = PreemptionGuard()
  closing.callback(preemption.close)
  logged, interval = {}, []
  status = "trained"

  def record(step, metrics):
    """Fetch a step's metrics: stop on NaN/inf; log means over the last log_every steps."""
    nonlocal logged
    host = jax.device_get(metrics)
    check_finite(step, host)
    interval.append(host)
    if step % config.log_every == 0 or step == config.num_steps:
      loss = float(np.mean([m["loss"] for m in interval]))
      logged = {"loss": loss, "perplexity": float(np.exp(min(loss, 80.0))),
                "grad_norm": float(np.mean([m["grad_norm"] for m in interval])),
                "lr": float(host["lr"]), **progress.measure(step)}
      if restriction:  # a pure function of the step: equal after a resume
        logged["epochs"] = restriction.epochs(step, config.batch_size * config.seq_len)
      interval.clear()
      writer.write(step, logged)
      progress.print(step, logged)
    if step == start + 1:
      progress.restart_clock(step)  # the first step's time is mostly compilation

  pending = None  # a step's metrics, fetched once the next step is dispatched
  tracing = False
  try:
    for step in range(start, config.num_steps):
      if profile and step == profile.start:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
        tracing = True
      state, metrics = training.step(state, training.global_batch(next(batches)))
      done = step + 1
      if pending:
        record(*pending)
      pending = (done, metrics)
      stopping = preemption.reached(done)
      evaluating = bool(config.eval_every) and (done % config.eval_every == 0
                                                or done == config.num_steps)
      saving = stopping or done == config.num_steps or (
          config.checkpoint.every and done % config.checkpoint.every == 0)
      tracing_ends = tracing and done == profile.stop
      if (stopping or evaluating or saving or tracing_ends or done == start + 1
          or done % config.log_every == 0):
        record(*pending)  # checked finite before this state may be saved
        pending = None
      if tracing_ends:
        jax.profiler.stop_trace()
        tracing = False
      if saving:
        ckpt.save(done, state, batches.get_state(), force=stopping or done == config.num_steps)
      if evaluating:
        eval_metrics = _evaluate(config, mesh, gdef, state.params, eval_tasks)
        writer.write(done, eval_metrics, prefix="eval")
        logged.update({f"eval_{k}": v for k, v in eval_metrics.items()})
        if main_process:
          print(f"step {done}: eval " + " ".join(f"{k} {v:.4f}" for k, v in
                                                 eval_metrics.items() if v is not None),
                flush=True)
      if saving or evaluating:
        progress.restart_clock(done)
      if stopping:
        status = "preempted"
        break
  finally:
    if tracing:
      jax.profiler.stop_trace()
  return {"step": int(state.step), "status": status, "restored": restored, **logged}
