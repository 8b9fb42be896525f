"""Train a config: the same command on one CPU, a GPU cluster or a TPU pod.

  python -m phd_jax.main --config=configs/tiny.py[:VARIANT] --workdir=DIR [--config.a.b=v]
      [--coordinator=host:port --num_processes=N --process_id=i] [--dry_run]

Several processes: on TPU pods and under SLURM / Open MPI `jax.distributed` finds its
peers itself; elsewhere pass --coordinator, --num_processes and --process_id.
--dry_run validates the config, builds the mesh and prints the parameter count and the
per-device memory of parameters + optimizer state, without compiling or training.
"""

from __future__ import annotations

import math
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from phd_jax import config as config_lib
from phd_jax import optim, sharding, train

config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Logs, checkpoints and config.json go here.")
flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.DEFINE_bool("dry_run", False, "Print parameter count and memory estimate; no training.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS

def _launched_processes() -> int:
  """Processes a TPU pod, multislice, SLURM or Open MPI launch started (1 elsewhere): in
  these environments jax.distributed.initialize() finds its peers itself."""
  env = os.environ
  return max(len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")),
             2 if "MEGASCALE_COORDINATOR_ADDRESS" in env else 1,
             int(env.get("SLURM_NTASKS", 1)), int(env.get("OMPI_COMM_WORLD_SIZE", 1)))


def _initialize_distributed() -> None:
  if FLAGS.coordinator or FLAGS.num_processes:
    jax.distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  elif _launched_processes() > 1:
    jax.distributed.initialize()


def _dry_run(config) -> None:
  config_lib.validate(config)
  mesh = sharding.make_mesh(config)
  sharding.check_batch(config, mesh)
  abstract = train.abstract_state(config, mesh)
  per_device = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                   for x in jax.tree.leaves(abstract))
  if jax.process_index():
    return
  print(f"variant: {config.phd.variant}")
  print(f"mesh: {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].device_kind}")
  total, norms = optim.param_counts(abstract.params)
  print(f"parameters: {total}")
  print(f"parameters without norm scales: {total - norms} (norm scales: {norms})")
  print(f"memory per device (params + optimizer state): {per_device / 2**30:.3f} GiB")


def main(argv) -> None:
  del argv
  if not FLAGS["verbosity"].present:  # Orbax logs every save step at INFO; -v 0 shows it
    logging.set_verbosity(logging.WARNING)
  _initialize_distributed()
  config = FLAGS.config
  if FLAGS.dry_run:
    _dry_run(config)
    return
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required to train")
  final = train.train(config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(f"done: step {final['step']}, " + ", ".join(
        f"{name} {final[name]:.4f}" for name in ("loss", "eval_loss") if name in final)
        + f"; logs and checkpoints in {FLAGS.workdir}")


if __name__ == "__main__":
  if os.getcwd() not in sys.path:  # config files import `configs.base` from the repo root
    sys.path.insert(0, os.getcwd())
  app.run(main)
