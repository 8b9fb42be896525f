"""The evaluator job: every checkpoint of a training run evaluated once, as it is committed.

  python -m phd_jax.evaluate --workdir=RUN --follow [--tasks=...] [--idle_timeout=S]

Training does not stop to score tasks: this loop runs beside it, on other devices or
another host, reading RUN (local or gs://) and writing only under `RUN/eval/` (or
--output_dir): `results.jsonl` (`results_log`; one line per step, the only state),
TensorBoard events under the in-loop evaluation's tags (`eval/loss`, `eval/<task>`,
`eval/average`) at each checkpoint's step, so that `tensorboard --logdir=RUN` draws both
side by side, and `lock.json` (`workdir.WorkdirLock`: a second evaluator of the same
folder is refused as a second trainer would be; the trainer's lock is never touched).

Each round lists `RUN/checkpoints/` and evaluates the oldest step the results file lacks,
then lists again; with nothing to do it waits `poll_seconds`. A step folder
  - without Orbax's commit marker is being written (object stores write in place): it is
    waited for, and committed later steps are evaluated meanwhile;
  - that is committed is read and scored exactly as `phd_jax.evaluate --checkpoint` does
    (`load`, `evaluate_loaded`), so the numbers are the same;
  - that the trainer's retention (`checkpoint.keep`) deletes before or while it is read is
    skipped with one line and not recorded (Orbax deletes file by file: a folder still
    losing files is being deleted). Parameters read whole are scored and recorded even if
    the folder goes during scoring: the numbers are the checkpoint's;
  - that does not read back as written (`checkpoint.integrity`) is skipped with one line
    and recorded as skipped with its commit time: a restart does not read it again, but
    the step the trainer saves anew after setting it aside is evaluated.
It returns (exit status 0) once the run's final step (`num_steps` in RUN/config.json,
read each round) is recorded, at once for a run already evaluated, or after the step at
hand on SIGTERM; it raises IdleTimeout (exit status 1) after `idle_timeout` seconds
without a new committed step (default: waits as long as it takes, as a preempted run
resumes later). Killed at any moment, a restart evaluates exactly the steps not recorded.
Each step's scalars go to the sinks of `make_sinks` (TensorBoard; W&B joins there) before
its line is written, so a kill in between repeats them there, never loses them. One
process only (`evaluate` refuses --follow with several).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from etils import epath

from phd_jax import checkpoint, tracking
from phd_jax import config as config_lib
from phd_jax.checkpoint.folders import absolute, step_folders
from phd_jax.checkpoint.integrity import COMMIT_FILE
from phd_jax.eval import report, suite
from phd_jax.eval.results_log import EVAL_DIR, RESULTS_FILE, ResultsLog
from phd_jax.preemption import PreemptionGuard
from phd_jax.state import LoadedModel, load_model
from phd_jax.workdir import WorkdirLock

POLL_SECONDS = 10.0  # between looks at the checkpoints when there is nothing to evaluate
DELETE_SETTLE_S = 1.0  # a folder that loses files within this is being deleted


@dataclasses.dataclass(frozen=True)
class Settings:
  """What `phd_jax.evaluate` scores and how (its flags)."""
  tasks: tuple[str, ...]
  data_dir: str = suite.DEFAULT_DATA_DIR
  limit: int | None = None
  loss_batches: int | None = None
  batch_size: int | None = None
  seq_len: int | None = None
  mesh_sizes: tuple[int, int, int] = (1, -1, 1)
  progress: bool = True

  def recorded(self) -> dict:
    """The flags that change the numbers: written with each result, and a restart must
    give the same (a curve of mixed settings would mislead)."""
    return {"tasks": list(self.tasks), "limit": self.limit, "loss_batches": self.loss_batches,
            "batch_size": self.batch_size, "seq_len": self.seq_len}


class IdleTimeout(RuntimeError):
  """No new committed checkpoint for `idle_timeout` seconds; the message says where the
  run stands."""


def load(folder, mesh_sizes) -> LoadedModel:
  """The model of one checkpoint folder on a mesh of `mesh_sizes`, with the config saved
  in it, validated as for any evaluation."""
  config = checkpoint.saved_config(folder)
  config_lib.validate(config, training=False)
  return load_model(folder, mesh_sizes, config=config)


def evaluate_loaded(loaded: LoadedModel, settings: Settings) -> dict:
  """The report of a loaded checkpoint: `eval_step<N>.json` of `phd_jax.evaluate`, and the
  evaluator's line of that step."""
  model, config, mesh, folder = loaded
  results = suite.evaluate(model, config, mesh, list(settings.tasks),
                           data_dir=settings.data_dir, limit=settings.limit,
                           loss_batches=settings.loss_batches, batch_size=settings.batch_size,
                           seq_len=settings.seq_len, progress=settings.progress)
  return {"checkpoint": str(folder), "step": int(folder.name) if folder.name.isdigit() else None,
          "variant": config.phd.variant, "limit": settings.limit,
          "data_dir": settings.data_dir, "results": results,
          "average": report.paper_average(results)}


class TensorBoardSink:
  """Scalars as TensorBoard events in `logdir`."""

  def __init__(self, logdir):
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._writer = SummaryWriter(logdir=str(logdir))

  def write(self, step: int, values: dict) -> None:
    for tag, value in values.items():
      self._writer.add_scalar(tag, value, step)
    self._writer.flush()  # before the results line: a restart may repeat, never lose

  def close(self) -> None:
    self._writer.close()


def make_sinks(eval_dir) -> list:
  """Where each evaluated step's scalars go besides results.jsonl: objects with
  `write(step, scalars)` and `close()`. The run's W&B sink joins them at the first step
  read (`_Follower._track`): its config says whether and where the run logs."""
  return [TensorBoardSink(eval_dir)]


def _say(text: str) -> None:
  print(text, file=sys.stderr, flush=True)


def _commit_time(folder: epath.Path):
  try:
    return (folder / COMMIT_FILE).stat().mtime
  except OSError:
    return None


def _file_count(folder: epath.Path) -> int | None:
  def count(directory):  # epath has no recursive glob on object stores
    return sum(count(p) if p.is_dir() else 1 for p in directory.iterdir())
  try:
    return count(folder) if folder.exists() else None
  except OSError:  # a subfolder went while walking: being deleted
    return None


def _vanishing(folder: epath.Path) -> bool:
  """Whether `folder` is gone, or going: it loses files within DELETE_SETTLE_S."""
  before = _file_count(folder)
  if before is None:
    return True
  time.sleep(DELETE_SETTLE_S)
  after = _file_count(folder)
  return after is None or after < before


def _final_step(run: epath.Path) -> int | None:
  """num_steps of the run's config.json; None before the trainer has written it."""
  try:
    steps = json.loads((run / "config.json").read_text()).get("num_steps")
  except (OSError, ValueError, AttributeError):
    return None
  return steps if isinstance(steps, int) else None


def _check_settings(log: ResultsLog, settings: Settings) -> None:
  done = next((r["settings"] for r in log.records if "settings" in r), None)
  if done is not None and done != settings.recorded():
    flags = lambda s: " ".join(f"--{k}={','.join(s[k]) if k == 'tasks' else s[k]}"
                               for k in settings.recorded() if s.get(k) is not None)
    raise ValueError(f"{log.path} holds results of {flags(done)}, not {flags(settings.recorded())}"
                     f": rerun with those flags, or give these results another --output_dir")


class _Follower:
  """The loop over one run's checkpoints; `run()` until done, SIGTERM or idle timeout."""

  def __init__(self, run, log, settings, sinks, guard, poll_seconds, idle_timeout):
    self.run_dir, self.checkpoints = run, run / "checkpoints"
    self.log, self.settings, self.sinks, self.guard = log, settings, sinks, guard
    self.poll_seconds, self.idle_timeout = poll_seconds, idle_timeout
    self.evaluated: list[int] = []
    self._tracking_checked = False
    self._last = None  # the last step recorded by this process
    self._lines: dict[int, list[dict]] = {}  # the results file's lines by step
    for record in log.records:
      self._lines.setdefault(record["step"], []).append(record)

  def _recorded(self, step: int, folder: epath.Path | None) -> bool:
    """Whether `step` has its line: results, or skipped as damaged in this very save."""
    return any("results" in r or folder is None or r.get("commit_time") == _commit_time(folder)
               for r in self._lines.get(step, ()))

  def _stopping(self) -> bool:
    return self.guard.reached(self._last or 0)

  def _wait(self, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not self._stopping() and (left := deadline - time.monotonic()) > 0:
      time.sleep(min(left, 0.2))  # a signal interrupts no sleep: look every 0.2 s

  def _record(self, record: dict) -> None:
    self.log.append(record)
    self._lines.setdefault(record["step"], []).append(record)
    self._last = record["step"]

  def _track(self, config) -> None:
    """Add the W&B sink of the run's `metrics.wandb_*` (the evaluator's own W&B run in
    the training run's group, `tracking.open_wandb`), once."""
    if not self._tracking_checked:
      self._tracking_checked = True
      sink = tracking.open_wandb(config, str(self.run_dir), job_type="eval",
                                 eval_dir=str(self.log.path.parent))
      if sink is not None:
        self.sinks.append(sink)

  def _evaluate(self, step: int, folder: epath.Path) -> None:
    _say(f"step {step}: evaluating {folder}")
    started = time.monotonic()
    try:
      loaded = load(folder, self.settings.mesh_sizes)
    except (ValueError, OSError) as e:
      if _vanishing(folder):
        _say(f"step {step}: deleted by the trainer's retention while it was read; skipped")
        return
      if not isinstance(e, checkpoint.DamagedCheckpoint):
        raise  # a setting (the saved config on this machine), not the checkpoint
      _say(f"step {step}: skipped: {e}")
      self._record({"step": step, "checkpoint": str(folder), "skipped": str(e),
                    "commit_time": _commit_time(folder)})
      return
    self._track(loaded.config)
    full = evaluate_loaded(loaded, self.settings)
    values = suite.scalars(full["results"])
    for sink in self.sinks:
      sink.write(step, values)
    seconds = time.monotonic() - started
    self._record({**full, "settings": self.settings.recorded(), "seconds": round(seconds, 3),
                  "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    self.evaluated.append(step)
    print(report.markdown(full), end="", flush=True)
    _say(f"step {step}: " + " ".join(f"{tag.removeprefix('eval/')} {value:.4f}"
                                     for tag, value in values.items()) + f" ({seconds:.0f} s)")

  def run(self) -> str:
    """"done", "stopped" (SIGTERM); IdleTimeout when nothing new came in time."""
    idle_since, waiting, pending = time.monotonic(), False, set()
    while True:
      final = _final_step(self.run_dir)
      folders = step_folders(self.checkpoints)
      for step in sorted(pending - folders.keys()):
        _say(f"step {step}: deleted by the trainer's retention before it was evaluated; "
             "skipped")
      pending = {s for s, folder in folders.items()
                 if not self._recorded(s, folder) and (folder / COMMIT_FILE).exists()}
      busy = bool(pending)
      if busy:  # then look again: the trainer may have saved, retention deleted
        step = min(pending)
        pending.discard(step)
        self._evaluate(step, folders[step])
        idle_since, waiting = time.monotonic(), False
      elif final is not None and self._recorded(final, folders.get(final)):
        _say(f"done: every checkpoint of {self.run_dir} up to its final step {final} is "
             f"in {self.log.path}")
        return "done"
      if self._stopping():
        _say(f"stopped by SIGTERM ({f'after step {self._last}' if self._last else 'waiting'})")
        return "stopped"
      if busy:
        continue
      if (self.idle_timeout is not None
          and time.monotonic() - idle_since >= self.idle_timeout):
        newest = max(self._lines, default="none")
        raise IdleTimeout(f"no new checkpoint in {self.checkpoints} for {self.idle_timeout:g} s "
                          f"(--idle_timeout); recorded up to step {newest} of "
                          f"{final if final is not None else '? (no config.json yet)'}")
      if not waiting:
        _say(f"waiting for checkpoints in {self.checkpoints} (final step "
             f"{final if final is not None else '? (no config.json yet)'}; looking every "
             f"{self.poll_seconds:g} s)")
        waiting = True
      self._wait(self.poll_seconds)


def follow(run, settings: Settings, *, poll_seconds: float = POLL_SECONDS,
           idle_timeout: float | None = None, output_dir: str | None = None) -> dict:
  """Evaluate each checkpoint of the training run `run` once, oldest first, as the
  trainer commits them (module docstring).

  Args:
    run: the run's workdir (local or gs://).
    settings: what to score and how.
    poll_seconds: the pause between looks when there is nothing to evaluate.
    idle_timeout: give up (IdleTimeout) after this long without a new committed step;
      None waits as long as it takes.
    output_dir: where results.jsonl, the TensorBoard events and the lock go (default
      `<run>/eval`).
  Returns:
    {"status": "done" | "stopped", "evaluated": the steps this call evaluated,
     "results": the path of results.jsonl}.
  Raises:
    workdir.RunRefused: another evaluator holds the folder. ValueError: the results file
    holds results of other settings.
  """
  run = absolute(run)
  eval_dir = epath.Path(output_dir) if output_dir else run / EVAL_DIR
  with WorkdirLock(eval_dir, kind="evaluator"):
    log = ResultsLog(eval_dir / RESULTS_FILE)
    _check_settings(log, settings)
    sinks, guard = make_sinks(eval_dir), PreemptionGuard()
    follower = _Follower(run, log, settings, sinks, guard, poll_seconds, idle_timeout)
    try:
      status = follower.run()
    finally:
      guard.close()
      for sink in sinks:
        sink.close()
  return {"status": status, "evaluated": follower.evaluated, "results": str(log.path)}
