"""The command line: dry runs of the paper's configs, a short training run, bad settings
as one-line errors with exit status 2, configs from anywhere."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from run_helpers import REPO_ROOT, SHORT_RUN, config_flags, read_metrics

pytestmark = pytest.mark.slow  # each test starts `python -m phd_jax.main`

TINY = ["--config=configs/tiny.py:PHD-CSWA-2-2-4",
        *config_flags(SHORT_RUN | {"num_steps": 6, "log_every": 3, "optim.warmup_steps": 2,
                                   "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})]


OFFLINE = ["--config.data.source=synthetic", "--config.data.tokenizer=byte"]


def start(*args, cwd=REPO_ROOT, env=None):
  """`python -m phd_jax.main ARGS` on 8 fake CPU devices (from conftest's XLA_FLAGS)."""
  return subprocess.Popen([sys.executable, "-m", "phd_jax.main", *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
  out, err = process.communicate(timeout=300)
  return process.returncode, out, err


def olmo2_parameters(vocab, d_model, layers, heads, kv_heads, head_dim, mlp):
  """(all, norm scales) of an untied OLMo2 with QK-norm over all heads, counted by hand."""
  matrices = d_model * head_dim * (2 * heads + 2 * kv_heads) + 3 * d_model * mlp
  norms = 2 * d_model + (heads + kv_heads) * head_dim
  return (2 * vocab * d_model + layers * (matrices + norms) + d_model,
          layers * norms + d_model)


def test_dry_run_prints_the_paper_parameter_counts_before_any_data_exists(tmp_path):
  """The README's sizing command on a fresh clone: parameters and memory need no data, then
  one line names the missing tokenizer and corpus (exit 2), as training would refuse."""
  names = ("olmo2_151m", "olmo2_550m", "olmo2_1b")
  runs = {name: start(f"--config={REPO_ROOT}/configs/{name}.py", "--dry_run", cwd=tmp_path)
          for name in names}
  shapes = {"olmo2_151m": (50304, 768, 12, 12, 4, 64, 2048),
            "olmo2_1b": (50304, 2048, 16, 32, 8, 64, 8192),
            "olmo2_550m": (50304, 1536, 16, 16, 4, 96, 4096)}
  paper_size = {"olmo2_151m": 151e6, "olmo2_1b": 1.2e9, "olmo2_550m": 550e6}
  for name, process in runs.items():
    code, out, err = finish(process)
    assert code == 2 and err.count("\n") == 1, (out, err)
    assert re.fullmatch(r"phd_jax.main: error: data.tokenizer_path='tokenizers/gpt-neox-20b/"
                        r"tokenizer.json': no such tokenizer.json file .*; data.train_split="
                        r"'train': data.name='fineweb_edu': no such prepared dataset in "
                        r"data/tfds.*\n", err), err
    total, norms = olmo2_parameters(*shapes[name])
    assert total == pytest.approx(paper_size[name], rel=0.02)
    documented = open(os.path.join(REPO_ROOT, "configs", f"{name}.py")).read()
    assert f"{total:,} parameters" in documented or f"Parameters: {total:,} " in documented
    assert re.search(r"^parameters: (\d+)$", out, re.M)[1] == str(total)
    without_norms = int(re.search(r"^parameters without norm scales: (\d+)", out, re.M)[1])
    assert without_norms == total - norms
    # float32 params + two Adam moments, split over 8 fsdp devices
    memory = float(re.search(r"memory per device .*: ([\d.]+) GiB", out)[1])
    assert memory == pytest.approx(total * 12 / 8 / 2**30, abs=2e-3)
  assert not os.listdir(tmp_path)


def test_trains_from_the_command_line(tmp_path):
  code, out, err = finish(start(*TINY, "--config.profile_steps=2:4", f"--workdir={tmp_path}"))
  assert code == 0, err[-2000:]
  traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces), traces
  assert re.search(r"step 6/6 \[#+\] loss [\d.]+ .* eta", out)
  assert re.search(r"^done: step 6, loss [\d.]+;", out, re.M)
  assert out.startswith("jax cpu: 8 x cpu in 1 process(es); mesh {'data': 2, 'fsdp': 2, "
                        "'tensor': 2}\n")
  rows = read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [3, 6]
  assert json.load(open(tmp_path / "config.json"))["mesh"]["tensor"] == 2
  assert os.listdir(tmp_path / "checkpoints") == ["6"]  # the final save


def test_hyperparameters_reach_tensorboard(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  code, _, err = finish(start(*TINY, "--config.num_steps=1", "--config.optim.warmup_steps=0",
                              f"--workdir={tmp_path}"))
  assert code == 0, err[-2000:]
  events = event_accumulator.EventAccumulator(glob.glob(f"{tmp_path}/events.out.*")[0])
  events.Reload()
  start_info = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
  assert b"phd.variant" in start_info and b"PHD-CSWA-2-2-4" in start_info
  table = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
  assert "| optim.lr | 0.003 |" in table


def usage_error(*args, cwd=REPO_ROOT):
  """(stderr, files left in the workdir) of a run that must exit 2 with one line."""
  code, out, err = finish(start(*args, cwd=cwd))
  assert code == 2, (out, err)
  assert err.startswith("phd_jax.main: error: ") and err.count("\n") == 1, err
  return err


def test_bad_setting_exits_naming_it(tmp_path):
  err = usage_error(*TINY, "--config.mesh.tensor=3", f"--workdir={tmp_path}", "--dry_run")
  assert "'tensor': 3" in err


@pytest.mark.parametrize("flag, message", [
    ("--config.checkpoint.keep=0", "checkpoint.keep must be a positive integer; got 0"),
    ("--config.profile_steps=abc", "profile_steps must look like 'START:STOP'; got 'abc'"),
    ("--config.optim.b2=1.5", r"optim.b2 must lie in \[0.0, 1.0\); got 1.5"),
    ("--config.optim.learning_rate=1", "config has no field optim.learning_rate; did you "
                                       "mean optim.lr"),
    ("--config.optim.lr=abc", "flag --config.optim.lr=abc: could not convert"),
])
def test_dry_run_refuses_what_training_refuses(flag, message, tmp_path):
  for mode in ("--dry_run", f"--workdir={tmp_path}"):
    assert re.search(message, usage_error(*TINY, flag, mode))
  assert not os.listdir(tmp_path)


def test_a_missing_config_file_is_named(tmp_path):
  err = usage_error(f"--config={tmp_path}/nope.py:Vanilla", "--dry_run")
  assert f"config file {tmp_path}/nope.py does not exist" in err


def test_paper_config_without_its_tokenizer_fails_before_writing(tmp_path):
  workdir = tmp_path / "run"
  err = usage_error(f"--config={REPO_ROOT}/configs/olmo2_151m.py", f"--workdir={workdir}",
                    cwd=tmp_path)
  assert "data.tokenizer_path='tokenizers/gpt-neox-20b/tokenizer.json': no such" in err
  assert not workdir.exists()


@pytest.mark.parametrize("source", ["checkpoint", "hf_missing", "hf_without_config"])
def test_a_missing_warm_start_is_one_line_in_training_and_dry_run(tmp_path, source):
  (tmp_path / "empty").mkdir()
  warm_start, problem = {
      "checkpoint": (f"{tmp_path}/nope", f"checkpoint path {tmp_path}/nope does not exist"),
      "hf_missing": (f"hf:{tmp_path}/nope", f"{tmp_path}/nope/config.json does not exist"),
      "hf_without_config": (f"hf:{tmp_path}/empty",
                            f"{tmp_path}/empty/config.json does not exist"),
  }[source]
  workdir = tmp_path / "run"
  for mode in ("--dry_run", f"--workdir={workdir}"):
    err = usage_error(*TINY, f"--config.checkpoint.warm_start={warm_start}", mode)
    assert err.startswith(f"phd_jax.main: error: checkpoint.warm_start='{warm_start}': "
                          f"{problem}"), err
  assert not workdir.exists()


def test_dry_run_from_another_directory_with_a_config_outside_the_checkout(tmp_path):
  (tmp_path / "my_config.py").write_text(
      "from phd_jax import defaults\n\n"
      "def get_config(variant=None):\n"
      "  c = defaults.get_config(variant)\n"
      "  c.model.update(vocab_size=256, d_model=64, num_layers=2, num_heads=4,\n"
      "                 num_kv_heads=2, head_dim=16, mlp_dim=128)\n"
      "  c.update(seq_len=32, batch_size=8)\n"
      "  return c\n")
  code, out, err = finish(start("--config=my_config.py:PHD-2", "--dry_run", cwd=tmp_path))
  assert code == 0, err[-2000:]
  assert "variant: PHD-2" in out
  assert re.search(r"^parameters: \d+$", out, re.M)
  assert sorted(os.listdir(tmp_path)) == ["my_config.py"]


def test_help_exits_0():
  code, out, _ = finish(start("--help"))
  assert code == 0 and "--config" in out and "--dry_run" in out


def test_cpu_only_jax_under_an_accelerator_launch_warns():
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="0")
  code, _, err = finish(start(*TINY, "--dry_run", env=env))
  assert code == 0, err
  assert "JAX sees only CPUs although CUDA_VISIBLE_DEVICES is set" in err


# Runs phd_jax.main with metrics.jsonl's writes failing as on a full disk from step 3 on.
FULL_DISK_DRIVER = """
import errno, os, runpy, sys
from phd_jax import metrics
original = metrics.Writer.write
def write(self, step, *args, **kwargs):
  if step >= 3:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self._path))
  return original(self, step, *args, **kwargs)
metrics.Writer.write = write
sys.argv = ["phd_jax.main"] + sys.argv[1:]
runpy.run_module("phd_jax.main", run_name="__main__")
"""


def _assert_disk_full_line(err, path_prefix):
  """One line naming the file, or (when the failing write did not say) the workdir."""
  assert err.count("\n") == 1 and re.match(
      f"phd_jax.main: error: no space left on device writing (under )?{re.escape(path_prefix)}",
      err), err
  assert err.endswith("; free space and rerun the same command to resume from the last "
                      "checkpoint\n")


def test_full_disk_is_one_line_naming_the_file(tmp_path):
  process = subprocess.Popen([sys.executable, "-c", FULL_DISK_DRIVER, *TINY,
                              "--config.log_every=1", f"--workdir={tmp_path}"], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  code, _, err = finish(process)
  assert code == 1
  _assert_disk_full_line(err, f"{tmp_path}/metrics.jsonl;")


def test_full_disk_during_a_checkpoint_save_is_one_line(tmp_path):
  """A real full file system (a 400 KiB tmpfs): TensorStore fails in Orbax's writer
  threads. Mounting needs root; elsewhere the simulated test above stands in."""
  mount = tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)],
                    capture_output=True, check=False).returncode:
    pytest.skip("mounting a tmpfs needs root")
  try:
    code, out, err = finish(start(*TINY, "--config.num_steps=20", "--config.checkpoint.every=1",
                                  "--config.mesh.data=1", "--config.mesh.fsdp=1",
                                  "--config.mesh.tensor=1", f"--workdir={mount}/run",
                                  env={**os.environ, "XLA_FLAGS": ""}))
  finally:
    subprocess.run(["umount", str(mount)], check=True)
  assert code == 1, out
  _assert_disk_full_line(err, f"{mount}/run")
