"""Train a config: the same command on one CPU, a GPU cluster or a TPU pod.

  python -m phd_jax.main --config=configs/tiny.py[:VARIANT] --workdir=DIR [--config.a.b=v]
      [--coordinator=host:port --num_processes=N --process_id=i] [--dry_run]
      [--allow_config_change] [--allow_restart]

--config is a config file anywhere on disk (`phd_jax.config.load_config`). Several
processes: on TPU pods and under SLURM / Open MPI `jax.distributed` finds its peers
itself; elsewhere pass --coordinator, --num_processes and --process_id.
--dry_run validates the config exactly as training does (fields, mesh, shardings,
tokenizer, dataset, warm-start and task files) without writing, compiling or training; it
prints the parameter count and the per-device memory of parameters + optimizer state
before checking the files, so a model is sized before its data is downloaded. A bad flag,
setting or file exits with status 2 and one line naming it.

Rerunning the same command resumes: it prints "restored step N from ..." (or that the run
is already complete), and refuses with one line (status 1) while another run holds the
workdir, when the config would change the experiment (--allow_config_change resumes
anyway), or when checkpoints exist but none reads back (--allow_restart starts over).
A full disk, a read-only one or a workdir that cannot be written (a file, under /proc, no
permission) ends the run with one line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import logging as py_logging
import math
import os
import re
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from phd_jax import config as config_lib
from phd_jax import checkpoint, optim, sharding, state, train
from phd_jax import workdir as workdir_lib

config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Logs, checkpoints and config.json go here.")
flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.DEFINE_bool("dry_run", False, "Validate, print parameter count and memory; no training.")
flags.DEFINE_bool("allow_config_change", False, "Resume although the config changes the "
                  "experiment (model, data, optimizer, num_steps, ...).")
flags.DEFINE_bool("allow_restart", False, "Start over from step 0 when the workdir's "
                  "checkpoints are all damaged.")
FLAGS = flags.FLAGS

HELP_FLAGS = ("-h", "--help", "-?", "--helpshort")
# Set by accelerator launches (our launch scripts, SLURM GPU jobs, TPU VMs): with these
# set, a CPU-only JAX is an installation problem, not a choice.
ACCELERATOR_ENV = ("CUDA_VISIBLE_DEVICES", "JAX_LOCAL_DEVICE_IDS", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                   "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "TPU_WORKER_HOSTNAMES", "TPU_NAME",
                   "TPU_ACCELERATOR_TYPE")


def usage_error(message: str, status: int = 2) -> None:
  """One line on stderr and exit status 2, as for any command-line usage error."""
  print(f"phd_jax.main: error: {message}", file=sys.stderr)
  sys.exit(status)


# The file system's refusals of a write (a full disk, read-only, no permission, a workdir that
# is a file or cannot exist): each ends the run with one line naming the path.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT)
# Those TensorStore (Orbax's writer threads) reports in words rather than as an OSError.
_WRITE_MESSAGES = {os.strerror(code): code
                   for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)}


def _write_failure(error: BaseException) -> tuple[str, int] | None:
  """(path, errno) of a refused write named by an OSError or TensorStore's message anywhere
  in the exception's chain (path "" when none names it); None if there is none."""
  code, path, seen = None, "", set()
  while error is not None and id(error) not in seen and not path:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
      code, path = code or error.errno, str(error.filename or "")
    elif words := next((w for w in _WRITE_MESSAGES if w in str(error)), None):
      match = re.search(r'(?:Failed writing:|local file) "([^"]+)"', str(error))
      code, path = code or _WRITE_MESSAGES[words], match[1] if match else ""
    error = error.__cause__ or error.__context__
  return None if code is None else (path, code)


class _DropWriteFailures(py_logging.Filter):
  """Drops log records about a refused write: the run reports it once, in one line."""

  def filter(self, record):
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    return not any(words in text for words in _WRITE_MESSAGES)


@contextlib.contextmanager
def _quiet_write_failures():
  handlers, drop = py_logging.getLogger().handlers, _DropWriteFailures()
  for handler in handlers:
    handler.addFilter(drop)
  try:
    yield
  finally:
    for handler in handlers:
      handler.removeFilter(drop)


def _exit_write_failure(path: str, code: int) -> None:
  """One line, then exit at once: Orbax's writer threads, failing one after another,
  would otherwise print a traceback each while the interpreter shuts down."""
  where = path or f"under {FLAGS.workdir}"
  if code in (errno.ENOSPC, errno.EDQUOT):
    problem = (f"{os.strerror(code).lower()} writing {where}; free space and rerun the same "
               "command to resume from the last checkpoint")
  else:
    problem = (f"cannot write {where}: {os.strerror(code)}; --workdir must be a directory "
               "this run can write")
  print(f"phd_jax.main: error: {problem}", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def _config_argument(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _check_config_arguments(argv) -> None:
  """The config file exists and every --config.a.b override names a field of it: stated in
  one line (with the closest fields) instead of ml_collections' traceback."""
  path = _config_argument(argv)
  if path is None:
    usage_error("--config=FILE[:VARIANT] is required")
  config = config_lib.load_config(path)
  for arg in argv:
    if match := re.match(r"--?(?:no)?config\.([^=]+)", arg):
      if message := config_lib.unknown_field_message(config, match[1]):
        usage_error(f"{arg}: {message}")


def parse_flags(argv):
  """absl's flag parsing, with --help exiting 0 and bad flags as one-line usage errors."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)
  try:
    _check_config_arguments(argv)
    return FLAGS(argv)
  except (flags.Error, config_lib.ConfigError) as e:
    usage_error(str(e))


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


def warn_if_cpu_only() -> None:
  """Warn when the environment asks for an accelerator but JAX found only CPUs (the CPU
  wheel of jax installed on a GPU/TPU machine trains, just 100x slower)."""
  expected = [name for name in ACCELERATOR_ENV if os.environ.get(name)]
  if jax.default_backend() == "cpu" and expected:
    logging.warning("JAX sees only CPUs although %s %s set: is the CPU-only jax installed? "
                    "See the README's Install section for jax[cuda12] / jax[tpu].",
                    ", ".join(expected), "is" if len(expected) == 1 else "are")


def describe_devices(mesh) -> str:
  devices = jax.devices()
  return (f"jax {jax.default_backend()}: {len(devices)} x {devices[0].device_kind} in "
          f"{jax.process_count()} process(es); mesh {dict(mesh.shape)}")


def _dry_run(config, mesh) -> None:
  abstract = state.abstract_state(config, mesh)
  per_device = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                   for x in jax.tree.leaves(abstract))
  if jax.process_index():
    return
  print(f"variant: {config.phd.variant}")
  total, norms = optim.param_counts(abstract.params)
  print(f"parameters: {total}")
  print(f"parameters without norm scales: {total - norms} (norm scales: {norms})")
  print(f"memory per device (params + optimizer state): {per_device / 2**30:.3f} GiB")


def main(argv) -> None:
  del argv
  if not FLAGS["verbosity"].present:  # Orbax logs every save step at INFO; -v 0 shows it
    logging.set_verbosity(logging.WARNING)
  if not FLAGS.dry_run and not FLAGS.workdir:
    usage_error("--workdir is required to train")
  _initialize_distributed()
  warn_if_cpu_only()
  config = FLAGS.config
  try:
    config_lib.validate(config, files=not FLAGS.dry_run)
    mesh = sharding.make_mesh(config)
    if jax.process_index() == 0:
      print(describe_devices(mesh), flush=True)
    if FLAGS.dry_run:
      _dry_run(config, mesh)  # sizes need no data: printed even when files are missing
      sys.stdout.flush()
      config_lib.check_files(config)
      train.check_warm_start(config)
      return
    with _quiet_write_failures():
      final = train.train(config, FLAGS.workdir, mesh=mesh, allow_restart=FLAGS.allow_restart,
                          allow_config_change=FLAGS.allow_config_change)
  except (config_lib.ConfigError, checkpoint.ModelMismatch) as e:
    usage_error(str(e))
  except workdir_lib.RunRefused as e:
    usage_error(str(e), status=1)
  except Exception as e:  # pylint: disable=broad-except
    if (failure := _write_failure(e)) is None:
      raise
    _exit_write_failure(*failure)
  if jax.process_index() == 0:
    print(closing_line(final, config, FLAGS.workdir), flush=True)


def closing_line(final: dict, config, workdir: str) -> str:
  step = final["step"]
  if final["status"] == "complete":
    return (f"already complete: step {step} of {config.num_steps} in {workdir} (nothing to "
            "train; evaluate it with python -m phd_jax.evaluate)")
  if final["status"] == "preempted":
    return f"preempted at step {step}, saved step {step}; resume with the same command"
  metrics = ", ".join(f"{name} {final[name]:.4f}" for name in ("loss", "eval_loss")
                      if name in final)
  return f"done: step {step}, {metrics}; logs and checkpoints in {workdir}"


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
