"""`python -m phd_jax.evaluate` on a checkpoint saved from 8 devices, evaluated on 1."""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoint_helpers import flip_a_bit
from eval_helpers import eval_config, eval_data_dir
from phd_jax import checkpoint, data, evaluate, sharding, state
from phd_jax.data.tokenizers import ByteTokenizer
from phd_jax.eval import heldout, report, suite
from phd_jax.loss import next_token_loss, target_mask
from run_helpers import REPO_ROOT

TASKS = ["loss", "arc_easy", "winogrande"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A workdir with a checkpoint written from a (2, 2, 2) mesh of 8 devices, and the
  results of evaluating those in-memory parameters on that mesh."""
  tmp = tmp_path_factory.mktemp("run")
  config, workdir, data_dir = eval_config(), str(tmp / "workdir"), eval_data_dir(tmp)
  mesh = sharding.make_mesh(config, sizes=(2, 2, 2))
  _, fresh = state.init_state(config, mesh)
  with checkpoint.Checkpointer(workdir, config) as ckpt:
    ckpt.save(7, fresh, {"position": 0}, force=True)
  model = state.model_from_params(config, fresh.params)
  results = suite.evaluate(model, config, mesh, TASKS, data_dir=data_dir, limit=6,
                           batch_size=4)
  return workdir, data_dir, results, model


@pytest.mark.slow
def test_heldout_loss_is_the_training_loss_of_the_validation_batches(saved_run):
  _, _, results, model = saved_run
  config = eval_config()
  iterator = data.make_iterator(config, split="validation")
  total = count = 0.0
  forward = jax.jit(lambda m, b: m(b["tokens"], b["segment_ids"], b["positions"]))
  for _ in range(config.eval_batches):
    batch = {k: jnp.asarray(v) for k, v in next(iterator).items()}
    loss, targets = next_token_loss(forward(model, batch), batch["tokens"],
                                    batch["segment_ids"])
    total, count = total + float(loss) * float(targets), count + float(targets)
  iterator.close()
  assert results["loss"]["targets"] == count
  assert results["loss"]["loss"] == pytest.approx(total / count, rel=1e-5)
  assert results["loss"]["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_bytes_of_targets_are_counted_per_document():
  tok = ByteTokenizer()
  docs = [[tok.bos_id, *tok.encode("hé"), tok.eos_id], [tok.bos_id, *tok.encode("yo")]]
  tokens = np.array([docs[0] + docs[1] + [0, 0]])
  segment_ids = np.array([[1] * len(docs[0]) + [2] * len(docs[1]) + [0, 0]])
  has_target = np.asarray(target_mask(segment_ids))
  # "hé" is 3 bytes (EOS none), "yo" 2; the BOSes are never targets.
  assert heldout._target_bytes(tok, tokens, segment_ids, has_target) == 5


@pytest.mark.slow
def test_checkpoint_from_8_devices_evaluates_on_1_device_alike(saved_run):
  workdir, data_dir, expected, _ = saved_run
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "-m", "phd_jax.evaluate", f"--workdir={workdir}",
       f"--tasks={','.join(TASKS)}", "--limit=6", f"--data_dir={data_dir}", "--batch_size=4",
       "--no_progress"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "eval_step7.json")) as f:
    got = json.load(f)
  assert got["step"] == 7 and got["variant"] == "PHD-CSWA-2-2-4"
  for key in ("loss", "perplexity"):
    assert got["results"]["loss"][key] == pytest.approx(expected["loss"][key], rel=1e-5)
  assert got["results"]["loss"]["targets"] == expected["loss"]["targets"]
  for name in TASKS[1:]:
    assert got["results"][name] == expected[name]
  markdown = open(os.path.join(workdir, "eval_step7.md")).read()
  assert markdown in out.stdout
  assert f"| arc_easy | 6 | {100 * expected['arc_easy']['acc']:.1f} ±" in markdown


@pytest.mark.slow
def test_in_loop_metrics_match_the_full_evaluation(saved_run):
  workdir, data_dir, expected, _ = saved_run
  model, config, mesh, _ = state.load_model(workdir, (2, 2, 2))
  metrics = suite.in_loop(model, config, mesh, tasks=TASKS, limit=6, data_dir=data_dir)
  assert metrics["eval/loss"] == pytest.approx(expected["loss"]["loss"], rel=1e-5)
  assert metrics["eval/arc_easy"] == expected["arc_easy"]["acc"]  # the paper's metric
  assert metrics["eval/winogrande"] == expected["winogrande"]["acc"]
  assert metrics["eval/average"] == pytest.approx(report.paper_average(expected))
  assert "eval/bits_per_byte" not in metrics  # synthetic tokens have no bytes


def run_main(argv, capsys) -> tuple[int, str]:
  """(exit status, stderr) of `python -m phd_jax.evaluate ARGV`, run in this process."""
  with pytest.raises(SystemExit) as exit_info:
    evaluate.main(argv)
  return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "loss,boolq"], r"--tasks: unknown \['boolq'\]"),
    (["--tasks", "piqa", "--data_dir", "{tmp}"], r"no file .*piqa.jsonl"),
    (["--mesh", "2,2"], "mesh must be DATA,FSDP,TENSOR"),
    (["--tasks", "loss"], "no complete checkpoint"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, argv, message):
  argv = ["--workdir", str(tmp_path)] + [a.format(tmp=tmp_path) for a in argv]
  code, err = run_main(argv, capsys)
  assert code == 2
  assert err.startswith("python -m phd_jax.evaluate: error: ") and err.count("\n") == 1, err
  assert re.search(message, err), err


@pytest.mark.slow
def test_step_folder_results_land_in_the_runs_workdir(saved_run, tmp_path, monkeypatch, capsys):
  run = tmp_path / "run"
  shutil.copytree(saved_run[0], run)
  monkeypatch.chdir(tmp_path)  # not where the results go
  evaluate.main(["--checkpoint", str(run / "checkpoints" / "7"), "--tasks", "loss",
                 "--loss_batches", "1", "--no_progress"])
  assert sorted(p.name for p in run.glob("eval_*")) == ["eval_step7.json", "eval_step7.md"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
  assert str(run / "eval_step7.json") in capsys.readouterr().out


@pytest.mark.slow
def test_a_damaged_newest_step_is_skipped_in_one_line_and_not_renamed(saved_run, tmp_path):
  """As training would resume: step 9's params do not read back as written, so step 7 is
  evaluated; evaluation only reads, so step 9 stays where it is."""
  workdir, data_dir, expected, _ = saved_run
  run = tmp_path / "run"
  shutil.copytree(workdir, run)
  step_7 = run / "checkpoints" / "7"
  shutil.copytree(step_7, run / "checkpoints" / "9")
  damaged = max((p for p in (run / "checkpoints" / "9" / "params").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  flip_a_bit(damaged)
  before = sorted(p.name for p in (run / "checkpoints").iterdir())
  out = subprocess.run(
      [sys.executable, "-m", "phd_jax.evaluate", f"--workdir={run}", "--tasks=loss",
       f"--data_dir={data_dir}", "--no_progress"], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  [line] = out.stderr.splitlines()
  assert (f"checkpoint {run}/checkpoints/9 is corrupted: params/"
          f"{damaged.relative_to(run / 'checkpoints' / '9' / 'params')} does not match the "
          "crc32 recorded when it was saved; trying the step before it.") in line, line
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
  assert sorted(p.name for p in run.glob("eval_*")) == ["eval_step7.json", "eval_step7.md"]
  got = json.loads((run / "eval_step7.json").read_text())
  assert got["results"]["loss"]["loss"] == pytest.approx(expected["loss"]["loss"], rel=1e-5)
