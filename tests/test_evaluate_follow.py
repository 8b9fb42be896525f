"""`python -m phd_jax.evaluate --workdir=RUN --follow`, the evaluator job: beside a training
run, each saved step evaluated exactly once with the numbers of `evaluate --checkpoint`;
killed and restarted, retention and damage under it, SIGTERM, a second evaluator, bad
flags."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest
from etils import epath

from checkpoint_helpers import flip_a_bit
from eval_helpers import eval_config, eval_data_dir
from phd_jax import checkpoint, evaluate, sharding, state, workdir
from phd_jax.checkpoint.integrity import COMMIT_FILE
from phd_jax.eval import follow, results_log, suite
from run_helpers import REPO_ROOT, SHORT_RUN, config_flags, read_metrics

STEPS = 4
FAST = ["--tasks=loss", "--loss_batches=1", "--no_progress", "--poll_seconds=0.1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A run that saved steps 1..STEPS (each with other parameters) and wrote config.json,
  as a finished training run leaves its workdir."""
  run = tmp_path_factory.mktemp("finished") / "run"
  config = eval_config()
  config.update_from_flattened_dict({"num_steps": STEPS, "checkpoint.keep": 10})
  _, fresh = state.init_state(config, sharding.make_mesh(config))
  with checkpoint.Checkpointer(str(run), config) as ckpt:
    for step in range(1, STEPS + 1):
      params = jax.tree.map(lambda x, s=step: x * (1 + s / 10), fresh.params)
      ckpt.save(step, fresh.replace(params=params), {"position": step}, force=True)
  workdir.write_config(str(run), config)
  return run


@pytest.fixture
def run(finished_run, tmp_path):
  """A copy of the finished run, for a test to change."""
  shutil.copytree(finished_run, tmp_path / "run")
  return tmp_path / "run"


def results_of(run) -> list[dict]:
  path = run / results_log.EVAL_DIR / results_log.RESULTS_FILE
  return results_log.parse(path.read_text()) if path.exists() else []


def steps_of(run) -> list[int]:
  return [r["step"] for r in results_of(run) if "results" in r]


def follow_in_process(run, *flags, capsys):
  """(what evaluate.main returned, stderr lines) of `--workdir=RUN --follow FLAGS`."""
  got = evaluate.main([f"--workdir={run}", "--follow", *FAST, *flags])
  return got, capsys.readouterr().err.splitlines()


def single_checkpoint(folder, output_dir, *flags) -> dict:
  """`evaluate --checkpoint=FOLDER FLAGS`'s report."""
  return evaluate.main([f"--checkpoint={folder}", "--no_progress", f"--output_dir={output_dir}",
                        *flags])


def scalars_in(logdir) -> dict:
  """{tag: {step: value}} of the TensorBoard events under `logdir` (not its subfolders)."""
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(logdir))
  events.Reload()
  return {tag: {e.step: e.value for e in events.Scalars(tag)}
          for tag in events.Tags()["scalars"]}


def live_lock(folder, path_name=workdir.LOCK_FILE) -> str:
  """A lock in `folder` held by a live process of this host; returns its text."""
  folder.mkdir(parents=True, exist_ok=True)
  text = json.dumps({"host": socket.gethostname(), "pid": os.getppid(),
                     "process_start": None, "started": "then", "token": "other",
                     "heartbeat": time.time()})
  (folder / path_name).write_text(text)
  return text


# ---------------------------------------------------------------------------------------------
# Beside a training run.

TRAINING = ["--config=configs/tiny.py:PHD-CSWA-2-2-4",
            *config_flags(SHORT_RUN | {"num_steps": 6, "log_every": 2, "eval_every": 2,
                                       "optim.warmup_steps": 2, "checkpoint.every": 2,
                                       "checkpoint.keep": 10})]
TWO_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                                          "--xla_backend_optimization_level=0"}


@pytest.mark.slow
def test_an_evaluator_beside_training_evaluates_each_saved_step_once_as_evaluate_does(
    tmp_path, capsys):
  """Started before the trainer (separate processes): steps 2, 4, 6 each evaluated once,
  with the numbers of `evaluate --checkpoint`, under the in-loop evaluation's TensorBoard
  tags and values at the same steps."""
  run = tmp_path / "run"
  evaluator = subprocess.Popen(
      [sys.executable, "-m", "phd_jax.evaluate", f"--workdir={run}", "--follow", "--tasks=loss",
       "--no_progress", "--poll_seconds=0.2", "--idle_timeout=300"],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  trainer = subprocess.run([sys.executable, "-m", "phd_jax.main", *TRAINING, f"--workdir={run}"],
                           cwd=REPO_ROOT, env=TWO_DEVICES, capture_output=True, text=True,
                           timeout=600)
  assert trainer.returncode == 0, trainer.stderr[-3000:]
  _, err = evaluator.communicate(timeout=600)
  assert evaluator.returncode == 0, err[-3000:]
  saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir())
  assert saved == [2, 4, 6] and steps_of(run) == saved
  assert [line for line in err.splitlines() if ": evaluating " in line] == [
      f"step {s}: evaluating {run}/checkpoints/{s}" for s in saved]
  assert err.splitlines()[-1] == (f"done: every checkpoint of {run} up to its final step 6 is in "
                                  f"{run}/eval/results.jsonl")
  for line in results_of(run):
    single = single_checkpoint(run / "checkpoints" / str(line["step"]), tmp_path / "single",
                               "--tasks=loss")
    assert line["results"] == single["results"]  # same devices, same code: exactly
  capsys.readouterr()
  in_loop = {r["step"]: r for r in read_metrics(run) if "eval_loss" in r}
  training_tb, evaluator_tb = scalars_in(run), scalars_in(run / "eval")
  assert set(evaluator_tb) == {t for t in training_tb if t.startswith("eval/")} == {
      "eval/loss", "eval/perplexity"}
  for line in results_of(run):
    step, loss = line["step"], line["results"]["loss"]
    for name in ("loss", "perplexity"):
      assert evaluator_tb[f"eval/{name}"][step] == pytest.approx(loss[name], rel=1e-6)
      # the trainer's own evaluation of the same parameters, on 2 devices
      assert training_tb[f"eval/{name}"][step] == pytest.approx(loss[name], rel=1e-5)
      assert in_loop[step][f"eval_{name}"] == pytest.approx(loss[name], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# After the run.

@pytest.mark.slow
def test_after_the_run_every_step_once_then_nothing_left(run, tmp_path, capsys):
  """Every step, oldest first, with `evaluate --checkpoint`'s numbers and, in TensorBoard,
  the training loop's metrics (`suite.in_loop`) of the same parameters; a rerun has
  nothing left and exits at once. A training lock held meanwhile is left as it was."""
  training_lock = live_lock(run)
  data_dir = eval_data_dir(tmp_path)
  tasks = ["--tasks=loss,arc_easy", "--limit=4", f"--data_dir={data_dir}"]
  got, err = follow_in_process(run, *tasks, capsys=capsys)
  assert got["status"] == "done" and got["evaluated"] == [1, 2, 3, 4]
  assert [line for line in err if ": evaluating " in line] == [
      f"step {s}: evaluating {run}/checkpoints/{s}" for s in range(1, STEPS + 1)]
  assert steps_of(run) == [1, 2, 3, 4]
  tb = scalars_in(run / "eval")
  for line in results_of(run):
    folder = run / "checkpoints" / str(line["step"])
    single = single_checkpoint(folder, tmp_path / "single", *tasks, "--loss_batches=1")
    assert line["results"] == single["results"] and line["average"] == single["average"]
    model, config, mesh, _ = state.load_model(folder, (1, -1, 1))
    metrics = suite.in_loop(model, config, mesh, tasks=("loss", "arc_easy"), limit=4,
                            data_dir=data_dir, loss_batches=1)
    assert {tag: values[line["step"]] for tag, values in tb.items()} == pytest.approx(metrics)
  capsys.readouterr()
  assert (run / workdir.LOCK_FILE).read_text() == training_lock
  assert not (run / "eval" / workdir.LOCK_FILE).exists()  # released

  again, err = follow_in_process(run, *tasks, capsys=capsys)
  assert again["evaluated"] == [] and err == [
      f"done: every checkpoint of {run} up to its final step {STEPS} is in "
      f"{run}/eval/results.jsonl"]
  assert steps_of(run) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# Killed, deleted, damaged, stopped.

# Runs the evaluator with the scoring of step AT (argv[1]) hanging: killed there, mid-step.
HANG_AT_STEP = """
import runpy, sys, time
from phd_jax.eval import follow
evaluate_loaded = follow.evaluate_loaded
def hang(loaded, settings):
  if loaded.folder.name == sys.argv[1]:
    time.sleep(600)
  return evaluate_loaded(loaded, settings)
follow.evaluate_loaded = hang
sys.argv = ["phd_jax.evaluate"] + sys.argv[2:]
runpy.run_module("phd_jax.evaluate", run_name="__main__")
"""


@pytest.mark.slow
def test_sigkill_mid_step_then_restart_leaves_no_gap_and_no_duplicate(run, capsys, caplog):
  """SIGKILL while step 2 is being evaluated, and a half-written line of it as a kill in
  the middle of the write leaves: the restart drops the half line, evaluates 2 again,
  then the rest, each once."""
  killed = subprocess.Popen([sys.executable, "-c", HANG_AT_STEP, "2", f"--workdir={run}",
                             "--follow", *FAST], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
  seen = []
  while not seen or seen[-1] != f"step 2: evaluating {run}/checkpoints/2\n":
    seen.append(killed.stderr.readline())
    assert seen[-1], "".join(seen)  # the evaluator ended before step 2
  killed.kill()
  assert killed.wait(timeout=60) == -signal.SIGKILL
  killed.stderr.close()
  assert steps_of(run) == [1]
  results = run / "eval" / "results.jsonl"
  with open(results, "a") as f:
    f.write('{"step": 2, "checkpoint": "')

  got, err = follow_in_process(run, capsys=capsys)
  assert got["evaluated"] == [2, 3, 4] and steps_of(run) == [1, 2, 3, 4]
  assert all(line.endswith("}") for line in results.read_text().splitlines())
  warnings = [r.getMessage() for r in caplog.records]
  assert f"Dropping line(s) 2 of {results}: cut short (a write was interrupted); their " \
         "steps are evaluated again." in warnings
  assert any(m.startswith(f"Taking over the lock {run}/eval/lock.json") for m in warnings)


@pytest.mark.slow
def test_a_step_being_written_is_waited_for(run, monkeypatch, capsys):
  """On object stores Orbax writes a step in place and commits it last: until then the
  final step is waited for; once committed it is evaluated, and the run is done."""
  commit = run / "checkpoints" / str(STEPS) / COMMIT_FILE
  os.rename(commit, run / "commit")
  wait = follow._Follower._wait

  def trainer_commits_meanwhile(self, seconds):
    os.rename(run / "commit", commit)
    wait(self, seconds)

  monkeypatch.setattr(follow._Follower, "_wait", trainer_commits_meanwhile)
  got, err = follow_in_process(run, capsys=capsys)
  assert got["status"] == "done" and steps_of(run) == [1, 2, 3, 4]
  waiting = err.index(f"waiting for checkpoints in {run}/checkpoints (final step {STEPS}; "
                      "looking every 0.1 s)")
  assert err[waiting - 1].startswith("step 3: loss ")
  assert err[waiting + 1] == f"step 4: evaluating {run}/checkpoints/4"


@pytest.mark.slow
def test_steps_deleted_by_retention_are_skipped_with_one_line_each(run, monkeypatch, capsys):
  """While step 2 is read, the trainer's retention deletes it and step 3 (listed, not yet
  evaluated): one line each, neither recorded, the loop goes on to step 4."""
  load_params = checkpoint.load_params

  def retention_strikes(path, abstract):
    if os.path.basename(str(path)) == "2":
      for step in (2, 3):
        shutil.rmtree(run / "checkpoints" / str(step))
    return load_params(path, abstract)

  monkeypatch.setattr(checkpoint, "load_params", retention_strikes)
  got, err = follow_in_process(run, capsys=capsys)
  assert got["status"] == "done" and steps_of(run) == [1, 4]
  assert [line for line in err if "deleted by" in line] == [
      "step 2: deleted by the trainer's retention while it was read; skipped",
      "step 3: deleted by the trainer's retention before it was evaluated; skipped"]
  assert [r["step"] for r in results_of(run)] == [1, 4]


def test_a_folder_losing_files_is_being_deleted(tmp_path, monkeypatch):
  """Orbax's retention deletes a step file by file: a folder that loses files while the
  evaluator looks twice is being deleted; a damaged one stays as it is."""
  folder = epath.Path(tmp_path / "5")  # as the loop lists them
  for name in ("a", "b"):
    (folder / "params" / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / "params" / name).write_text(name)
  assert not follow._vanishing(folder)
  monkeypatch.setattr(follow.time, "sleep", lambda _: (folder / "params" / "a").unlink())
  assert follow._vanishing(folder)  # a file went between the two looks
  shutil.rmtree(folder)
  assert follow._vanishing(folder)


@pytest.mark.slow
def test_a_damaged_step_is_recorded_once_and_its_new_save_evaluated(run, finished_run,
                                                                     capsys):
  params = run / "checkpoints" / "3" / "params"
  damaged = max((p for p in params.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  flip_a_bit(damaged)
  got, err = follow_in_process(run, capsys=capsys)
  assert got["status"] == "done" and steps_of(run) == [1, 2, 4]
  assert [line for line in err if line.startswith("step 3:")] == [
      f"step 3: evaluating {run}/checkpoints/3",
      f"step 3: skipped: checkpoint {run}/checkpoints/3 is corrupted: params/"
      f"{damaged.relative_to(params)} does not match the crc32 recorded when it was saved"]
  [skipped] = [r for r in results_of(run) if "skipped" in r]
  assert skipped["step"] == 3 and skipped["skipped"] == err[err.index(
      f"step 3: evaluating {run}/checkpoints/3") + 1].removeprefix("step 3: skipped: ")

  again, err = follow_in_process(run, capsys=capsys)  # not read again
  assert again["evaluated"] == [] and len(err) == 1 and err[0].startswith("done: ")

  # The trainer sets the step aside and saves it anew: another commit, evaluated.
  shutil.rmtree(run / "checkpoints" / "3")
  shutil.copytree(finished_run / "checkpoints" / "3", run / "checkpoints" / "3")
  commit = run / "checkpoints" / "3" / COMMIT_FILE
  os.utime(commit, (time.time(), commit.stat().st_mtime + 10))
  resaved, _ = follow_in_process(run, capsys=capsys)
  assert resaved["evaluated"] == [3] and steps_of(run) == [1, 2, 4, 3]


@pytest.mark.slow
def test_sigterm_finishes_the_step_at_hand_and_stops(run, monkeypatch, capsys):
  evaluate_loaded = follow.evaluate_loaded

  def terminated_while_scoring(loaded, settings):
    if loaded.folder.name == "2":
      os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would; caught by the evaluator
    return evaluate_loaded(loaded, settings)

  monkeypatch.setattr(follow, "evaluate_loaded", terminated_while_scoring)
  got, err = follow_in_process(run, capsys=capsys)
  assert got["status"] == "stopped" and steps_of(run) == [1, 2]
  assert err[-1] == "stopped by SIGTERM (after step 2)"


# ---------------------------------------------------------------------------------------------
# Refusals: one line each, before any checkpoint is read.

def exit_status_and_error(argv, capsys) -> tuple[int, str]:
  """(exit status, the error line, the last on stderr) of `evaluate ARGV`."""
  with pytest.raises(SystemExit) as exit_info:
    evaluate.main(argv)
  *progress, err = capsys.readouterr().err.splitlines()
  assert err.startswith("python -m phd_jax.evaluate: error: "), err
  assert not any("error" in line or "Traceback" in line for line in progress), progress
  return exit_info.value.code, err


def test_a_second_evaluator_is_refused_as_a_second_trainer_would_be(tmp_path, capsys):
  live_lock(tmp_path / "eval")
  code, err = exit_status_and_error([f"--workdir={tmp_path}", "--follow", *FAST], capsys)
  assert code == 1
  assert f"error: {tmp_path}/eval is in use by another evaluator: host {socket.gethostname()} " \
         f"pid {os.getppid()} " in err
  assert f"delete {tmp_path}/eval/lock.json" in err
  assert not (tmp_path / workdir.LOCK_FILE).exists()  # the trainer's is no business of it


@pytest.mark.parametrize("flags, message", [
    (["--checkpoint={tmp}/checkpoints/1", "--follow"], "--follow needs --workdir=RUN"),
    (["--workdir={tmp}", "--follow", "--poll_seconds=0"],
     "--poll_seconds must be a positive number of seconds; got 0.0"),
    (["--workdir={tmp}", "--follow", "--idle_timeout=-1"],
     "--idle_timeout must be a positive number of seconds; got -1.0"),
    (["--workdir={tmp}", "--follow", "--num_processes=2"], "--follow runs as one process"),
    (["--workdir={tmp}", "--idle_timeout=5"], "--poll_seconds and --idle_timeout apply to "
                                              "--follow only"),
])
def test_bad_follow_flags_exit_2_with_one_line(tmp_path, capsys, flags, message):
  code, err = exit_status_and_error(["--tasks=loss"] + [f.format(tmp=tmp_path) for f in flags],
                                    capsys)
  assert code == 2 and message in err, err
  assert not (tmp_path / "eval").exists()


def test_a_restart_with_other_settings_is_refused(tmp_path, capsys):
  log = results_log.ResultsLog(tmp_path / "eval" / "results.jsonl")
  log.append({"step": 1, "results": {}, "settings": follow.Settings(
      tasks=("loss",), loss_batches=2).recorded()})
  code, err = exit_status_and_error([f"--workdir={tmp_path}", "--follow", *FAST], capsys)
  assert code == 2
  assert err.endswith(f"error: {tmp_path}/eval/results.jsonl holds results of --tasks=loss "
                      "--loss_batches=2, not --tasks=loss --loss_batches=1: rerun with those "
                      "flags, or give these results another --output_dir")


def test_idle_timeout_exits_1_saying_where_the_run_stands(tmp_path, capsys):
  (tmp_path / "config.json").write_text(json.dumps({"num_steps": 40}))
  started = time.monotonic()
  code, err = exit_status_and_error([f"--workdir={tmp_path}", "--follow", *FAST,
                                     "--idle_timeout=0.3"], capsys)
  assert code == 1 and time.monotonic() - started >= 0.3
  assert err.endswith(f"error: no new checkpoint in {tmp_path}/checkpoints for 0.3 s "
                      "(--idle_timeout); recorded up to step none of 40")
