"""`python -m phd_jax.evaluate` on a checkpoint saved from 8 devices, evaluated on 1."""

import json
import os
import subprocess
import sys

import pytest

from eval_helpers import ROOT, eval_data_dir, small_config
from phd_jax import checkpoint, evaluate, train
from phd_jax.eval import report

TASKS = ["loss", "arc_easy", "winogrande"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A workdir with a checkpoint written from a (2, 2, 2) mesh of 8 devices, and the
  results of evaluating those in-memory parameters on that mesh."""
  tmp = tmp_path_factory.mktemp("run")
  config, workdir, data_dir = small_config(), str(tmp / "workdir"), eval_data_dir(tmp)
  mesh = evaluate.eval_mesh(config, (2, 2, 2))
  _, state = train.init_state(config, mesh)
  with checkpoint.Checkpointer(workdir, config) as ckpt:
    ckpt.save(7, state, {"position": 0}, force=True)
  model = train.model_from_params(config, state.params)
  results = evaluate.evaluate(model, config, mesh, TASKS, data_dir=data_dir, limit=6,
                              batch_size=4)
  return workdir, data_dir, results


def test_checkpoint_from_8_devices_evaluates_on_1_device_alike(saved_run):
  workdir, data_dir, expected = saved_run
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "-m", "phd_jax.evaluate", f"--workdir={workdir}",
       f"--tasks={','.join(TASKS)}", "--limit=6", f"--data_dir={data_dir}", "--batch_size=4",
       "--no_progress"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
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


def test_in_loop_metrics_match_the_full_evaluation(saved_run):
  workdir, data_dir, expected = saved_run
  model, config, mesh, _ = evaluate.load_model(workdir, (2, 2, 2))
  metrics = evaluate.in_loop(model, config, mesh, tasks=TASKS, limit=6, data_dir=data_dir)
  assert metrics["eval/loss"] == pytest.approx(expected["loss"]["loss"], rel=1e-5)
  assert metrics["eval/arc_easy"] == expected["arc_easy"]["acc"]  # the paper's metric
  assert metrics["eval/winogrande"] == expected["winogrande"]["acc"]
  assert metrics["eval/average"] == pytest.approx(report.paper_average(expected))
  assert "eval/bits_per_byte" not in metrics  # synthetic tokens have no bytes


def test_bad_flags_fail_before_loading(tmp_path):
  with pytest.raises(ValueError, match="--tasks: unknown \\['boolq'\\]"):
    evaluate.main(["--workdir", str(tmp_path), "--tasks", "loss,boolq"])
  with pytest.raises(ValueError, match="no file .*piqa.jsonl"):
    evaluate.main(["--workdir", str(tmp_path), "--tasks", "piqa", "--data_dir", str(tmp_path)])
  with pytest.raises(ValueError, match="--mesh"):
    evaluate.main(["--workdir", str(tmp_path), "--mesh", "2,2"])
  with pytest.raises(ValueError, match="no complete checkpoint"):
    evaluate.main(["--workdir", str(tmp_path), "--tasks", "loss"])
