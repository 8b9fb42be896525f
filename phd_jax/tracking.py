"""Weights & Biases tracking, optional (`pip install wandb`), beside TensorBoard and
`metrics.jsonl`: the same scalars under the TensorBoard tags (`train/loss`, `eval/loss`,
`eval/<task>`), and the run's config as its hyperparameters.

`metrics.wandb_project` turns it on ("" = off: wandb is then never imported);
`metrics.wandb_entity` picks the team or user; `metrics.wandb_mode` is "online", "offline"
(written under the workdir, uploaded later with `wandb sync <workdir>/wandb/offline-run-*`,
which joins a resumed run's folders into one run) or "disabled". `config.validate` refuses a
project when wandb does not import, before anything is built.

One W&B run per job, continued across restarts: the training job's run id is stored in
`<workdir>/wandb_run.json` the first time and passed back (`resume="allow"`) when the run
resumes. W&B does not let two processes write one run, so the evaluator that follows the
checkpoints (`job_type="eval"`) logs to a run of its own, whose id is kept in
`<workdir>/eval/wandb_run.json`, in the training run's group (named by the training run's
id), so the W&B UI shows both together.

Steps: every record carries the training step as the metric `step`, which `define_metric`
makes the x-axis of all the others; W&B's own step counter (`log(step=)`) is left to count
records. A run resumed after a kill replays the steps since its last checkpoint, and W&B
drops a record whose `step=` is below its last one; as a plain metric the replayed steps
are kept (plotted after the lost ones at the same `step`).

Files: a local workdir holds W&B's folder (`<workdir>/wandb`, `<workdir>/eval/wandb`); for
a gs:// workdir, W&B writes to its default local folder (`./wandb`, or $WANDB_DIR) and only
the run id goes to the workdir.
"""

from __future__ import annotations

import json
import uuid

import jax
from absl import logging
from etils import epath

from phd_jax import config as config_lib
from phd_jax import workdir as workdir_lib

RUN_FILE = "wandb_run.json"
JOB_TYPES = ("train", "eval")
STEP_METRIC = "step"


class WandbSink:
  """A W&B run taking the scalars `metrics.Writer` writes, each that is not None at
  x-axis `step`; the run starts at `open()` or at the first `write`."""

  def __init__(self, start):
    self._start = start
    self.run = None

  def open(self) -> WandbSink:
    if self.run is None:
      self.run = self._start()
    return self

  def write(self, step: int, scalars: dict, prefix: str | None = None) -> None:
    """`scalars` named by TensorBoard tag ({"eval/loss": 2.1}, as the evaluator has them),
    or by bare name ({"loss": 2.1}) under `prefix` ("train", "eval"), as in
    `metrics.Writer.write`."""
    tags = {(f"{prefix}/{name}" if prefix else name): value
            for name, value in scalars.items() if value is not None}
    self.open().run.log({STEP_METRIC: step, **tags})

  def close(self, failed: bool = False) -> None:
    """Finish the run; `failed` marks it so in W&B (an exception stopped the job)."""
    if self.run is not None:
      self.run.finish(exit_code=1 if failed else 0)


def open_wandb(config, workdir: str, job_type: str = "train", *,
               eval_dir: str | None = None) -> WandbSink | None:
  """The W&B run of `workdir`'s training job, or of its evaluator (`job_type="eval"`).

  Args:
    config: the run's config; `metrics.wandb_*` (absent in configs saved before it existed:
      off) say where to log, and all its fields are the run's hyperparameters.
    workdir: the training run's workdir (local or gs://).
    job_type: "train" or "eval". Each is its own W&B run, in the group named by the
      training run's id, its id stored in `<workdir>/wandb_run.json` or
      `<eval_dir>/wandb_run.json` the first time and continued after a restart. The
      training run starts here; the evaluator's at its first write, by when the trainer
      has stored its id (before its first step). The evaluator writes nothing the trainer
      reads: without the trainer's id, its run has no group.
    eval_dir: the evaluator's folder (`phd_jax.eval.follow`); needed for job_type="eval".

  Returns:
    A `WandbSink` (`write(step, scalars, prefix=None)`, `close(failed=False)`), or None
    when `metrics.wandb_project` is empty or off process 0 (only process 0 logs).
  """
  if job_type not in JOB_TYPES:
    raise ValueError(f"job_type must be one of {list(JOB_TYPES)}; got {job_type!r}")
  settings = config.get("metrics")
  if settings is None or not settings.wandb_project or jax.process_index() != 0:
    return None
  workdir = epath.Path(workdir)
  if job_type == "eval" and eval_dir is None:
    raise ValueError("open_wandb(job_type='eval') needs eval_dir, the evaluator's folder")
  folder = workdir if job_type == "train" else epath.Path(eval_dir)
  run_id = _stored_run_id(folder)

  def start():
    import wandb  # pylint: disable=import-outside-toplevel
    train_id = _read_run_id(workdir)
    if train_id is None:
      logging.warning("No W&B run id in %s (the trainer stores it before its first step): "
                      "the %s run %s joins no group.", workdir, job_type, run_id)
    run = wandb.init(
        project=settings.wandb_project, entity=settings.wandb_entity or None,
        mode=settings.wandb_mode, id=run_id, resume="allow", group=train_id,
        name=workdir.name + ("" if job_type == "train" else f"-{job_type}"),
        job_type=job_type, config=_hyperparameters(config),
        dir=None if "://" in str(folder) else str(folder),
        reinit="create_new")  # leaves wandb.run, and any run the caller has, alone
    run.define_metric(STEP_METRIC)
    run.define_metric("*", step_metric=STEP_METRIC)
    return run

  sink = WandbSink(start)
  return sink.open() if job_type == "train" else sink


def _read_run_id(folder: epath.Path) -> str | None:
  path = folder / RUN_FILE
  return json.loads(path.read_text())["id"] if path.exists() else None


def _stored_run_id(folder: epath.Path) -> str:
  """The W&B run id kept in `folder`/wandb_run.json, chosen and written there on first use
  (before W&B is asked, so a job killed at any point finds the id its run has)."""
  run_id = _read_run_id(folder)
  if run_id is None:
    run_id = uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_atomically(folder / RUN_FILE, json.dumps({"id": run_id}) + "\n")
  return run_id


def _hyperparameters(config) -> dict:
  """The config as JSON values, nested by group: the W&B UI names them "optim.lr" as the
  flattened config does, and W&B asks for keys without dots."""
  return json.loads(config_lib.to_json(config))
