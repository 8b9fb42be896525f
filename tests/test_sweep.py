"""The sweep trains every (variant, seed) in its own workdir, resumes an interrupted run to
the same result as an uninterrupted one, skips finished runs, refuses bad input before
training, and its runs make a comparison report whose numbers are the metrics files'."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from phd_jax import compare, sweep
from run_helpers import REPO_ROOT, SHORT_RUN, TINY_CONFIG, config_flags, read_metrics

CONFIG = str(TINY_CONFIG)
# Seconds per run: 4 steps of the short run, a checkpoint and an evaluation every 2.
TINY = config_flags(SHORT_RUN | {"num_steps": 4, "log_every": 1, "eval_every": 2,
                                 "eval_batches": 1, "checkpoint.every": 2,
                                 "optim.warmup_steps": 1})


def last_eval_loss(run_dir):
  return [m["eval_loss"] for m in read_metrics(run_dir) if "eval_loss" in m][-1]


def test_dry_run_prints_one_command_per_run(tmp_path, capsys):
  assert sweep.main([f"--config={CONFIG}", "--variants=Vanilla,PHD-2@num_steps=70",
                     "--seeds=0,3", f"--workdir={tmp_path}", "--dry_run",
                     "--config.optim.lr=0.001"]) == 0
  lines = capsys.readouterr().out.splitlines()
  expected = []
  for variant, setting in (("Vanilla", []), ("PHD-2", ["--config.num_steps=70"])):
    spec = "PHD-2@num_steps=70" if setting else variant
    for seed in (0, 3):
      expected.append(["python", "-m", "phd_jax.main", f"--config={CONFIG}:{variant}",
                       f"--workdir={tmp_path / spec / f'seed{seed}'}", f"--config.seed={seed}",
                       "--config.optim.lr=0.001", *setting])
  assert [shlex.split(line) for line in lines] == expected
  assert not any(tmp_path.iterdir())  # nothing trained, nothing written


@pytest.mark.parametrize("args, message", [
    (["--variants=Vanilla,PHD-Z"], "PHD-Z"),
    (["--variants=Vanilla@model.num_layer=2"], "model.num_layer"),
    (["--variants=Vanilla@num_steps"], "field=value"),
    (["--variants=Vanilla,Vanilla"], "twice"),
    (["--variants=Vanilla", "--seeds=0,x"], "--seeds"),
    (["--variants=Vanilla", "--config.optim.lr=fast"], "optim.lr"),
    (["--variants=Vanilla", "--config.num_steps=0"], "num_steps"),
    (["--variants=Vanilla", "--epochs=3"], "--epochs"),
])
def test_bad_input_is_refused_before_training(tmp_path, capsys, args, message):
  with pytest.raises(SystemExit) as exit_info:
    sweep.main([f"--config={CONFIG}", f"--workdir={tmp_path}", *args])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
  assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_sweep_resumes_interrupted_run_and_reports(tmp_path, capsys, monkeypatch):
  # The runs are subprocesses: one device each (not the 8 fake ones) compiles faster.
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  args = [f"--config={CONFIG}", "--variants=Vanilla,PHD-2", "--seeds=0,1",
          f"--workdir={tmp_path}", *TINY]
  assert sweep.main(args) == 0
  runs = {(v, s): str(tmp_path / v / f"seed{s}") for v in ("Vanilla", "PHD-2") for s in (0, 1)}
  for (variant, seed), run_dir in runs.items():
    status = sweep.read_status(run_dir)
    assert (status["status"], status["variant"], status["seed"]) == ("done", variant, seed)
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert (config["phd"]["variant"], config["seed"], config["num_steps"]) == (variant, seed, 4)
  assert last_eval_loss(runs["Vanilla", 0]) != last_eval_loss(runs["Vanilla", 1])  # seeds differ

  # Interrupt PHD-2 seed 1 after its step-2 checkpoint: the final checkpoint and the
  # status never written. Rerunning the sweep trains only that run, from step 2.
  interrupted = runs["PHD-2", 1]
  uninterrupted_loss = last_eval_loss(interrupted)
  shutil.rmtree(os.path.join(interrupted, "checkpoints", "4"))
  os.remove(os.path.join(interrupted, sweep.STATUS_FILE))
  capsys.readouterr()
  assert sweep.main(args) == 0
  out = capsys.readouterr().out
  assert out.count("done already, skipped") == 3
  assert sweep.read_status(interrupted)["attempts"] == 1  # the first status was removed
  assert sweep.read_status(runs["Vanilla", 0])["attempts"] == 1
  log = open(os.path.join(interrupted, sweep.LOG_FILE)).read()
  assert log.count("$ ") == 2  # two commands, the second one resumed
  resumed_steps = [m["step"] for m in read_metrics(interrupted) if "loss" in m]
  assert resumed_steps == [1, 2, 3, 4, 3, 4]
  np.testing.assert_allclose(last_eval_loss(interrupted), uninterrupted_loss, rtol=1e-5)

  # The report from these runs: its numbers are the metrics files'.
  (md, tokens_png, flops_png), damaged = compare.write_report([str(tmp_path)],
                                                              str(tmp_path / "report"))
  assert damaged == []
  table = open(md).read()
  for variant in ("Vanilla", "PHD-2"):
    finals = [last_eval_loss(runs[variant, s]) for s in (0, 1)]
    mean, se = np.mean(finals), np.std(finals, ddof=1) / np.sqrt(2)
    row = next(line for line in table.splitlines() if line.startswith(f"| {variant} |"))
    assert f"{mean:.4f} ± {se:.4f}" in row and "| 2/2 |" in row
  deltas = [last_eval_loss(runs["PHD-2", s]) - last_eval_loss(runs["Vanilla", s]) for s in (0, 1)]
  assert f"{np.mean(deltas):+.4f} ± {np.std(deltas, ddof=1) / np.sqrt(2):.4f} (n=2)" in table
  for png in (tokens_png, flops_png):
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10_000


@pytest.mark.parametrize("saved, expected", [(None, "interrupted"), (3, "interrupted"),
                                             (4, "done")])
def test_a_run_that_exits_0_is_done_only_at_its_last_step(tmp_path, saved, expected):
  """A preempted trainer saves and exits 0: the sweep must resume it next time, not skip it."""
  run = sweep.Run("Vanilla", "Vanilla", (), 0, str(tmp_path / "run"), num_steps=4)
  if saved is not None:
    os.makedirs(tmp_path / "run" / "checkpoints" / str(saved))
  os.makedirs(tmp_path / "run" / "checkpoints" / "9.corrupt", exist_ok=True)  # set aside
  status = sweep.execute(run, ["python3", "-c", "pass"], None)
  assert (status["status"], status["returncode"]) == (expected, 0)
  assert sweep.read_status(run.workdir)["status"] == expected


@pytest.mark.slow
def test_an_empty_or_truncated_status_file_resumes_the_run_with_one_warning(tmp_path):
  """`python -m phd_jax.sweep` as typed: a damaged sweep_status.json means "not done"."""
  env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")  # one device

  def run_sweep():
    return subprocess.run([sys.executable, "-m", "phd_jax.sweep", f"--config={CONFIG}",
                           "--variants=Vanilla", f"--workdir={tmp_path}", *TINY], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
  first = run_sweep()
  assert first.returncode == 0, first.stderr
  status_file = tmp_path / "Vanilla" / "seed0" / sweep.STATUS_FILE
  text = status_file.read_text()
  for damaged in ("", text[:len(text) // 2]):
    status_file.write_text(damaged)
    again = run_sweep()
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("\n") == 1 and again.stderr.startswith(
        f"warning: {status_file} is damaged: not JSON (") and again.stderr.endswith(
        "; the run is resumed\n"), again.stderr
    assert "training in" in again.stdout and "done already" not in again.stdout
    status = json.loads(status_file.read_text())  # rewritten whole
    assert (status["status"], status["attempts"]) == ("done", 1)
  log = (tmp_path / "Vanilla" / "seed0" / sweep.LOG_FILE).read_text()
  assert log.count("already complete: step 4 of 4") == 2  # resumed, nothing retrained


def test_a_path_in_a_variant_setting_stays_one_folder_below_the_sweep(tmp_path, capsys):
  workdir = tmp_path / "sweep"
  specs = ["Vanilla@data.tokenizer_path=../../../escaped", "Vanilla@data.tokenizer_path=%2F",
           "Vanilla@data.tokenizer_path=/"]
  assert sweep.main([f"--config={CONFIG}", f"--variants={','.join(specs)}",
                     f"--workdir={workdir}", "--dry_run"]) == 0
  workdirs = [next(a.partition("=")[2] for a in shlex.split(line) if a.startswith("--workdir="))
              for line in capsys.readouterr().out.splitlines()]
  folders = [os.path.relpath(os.path.normpath(w), workdir) for w in workdirs]
  assert folders == ["Vanilla@data.tokenizer_path=..%2F..%2F..%2Fescaped/seed0",
                     "Vanilla@data.tokenizer_path=%252F/seed0",
                     "Vanilla@data.tokenizer_path=%2F/seed0"]
