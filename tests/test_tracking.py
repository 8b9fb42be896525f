"""Weights & Biases tracking (phd_jax/tracking.py) in W&B's offline mode, read back from the
run files it writes: the same scalars as metrics.jsonl, the config as hyperparameters, one
run continued across a resume, the evaluator's own run in the training run's group; and the
settings refused before anything is built."""

import glob
import json
import struct
import sys
from typing import NamedTuple

import pytest

from eval_helpers import eval_data_dir
from phd_jax import config as config_lib
from phd_jax import tracking, train
from phd_jax.eval import follow, suite
from phd_jax.eval.results_log import EVAL_DIR, RESULTS_FILE, ResultsLog
from phd_jax.metrics import Writer
from run_helpers import read_metrics, small_config

# An offline run's `run-<id>.wandb`: a 7-byte file header, then LevelDB-log records in
# 32 KiB blocks (7-byte header each: CRC, length, kind; a record too long for its block is
# split FIRST, MIDDLE..., LAST) holding one serialized `wandb_internal_pb2.Record` each.
FILE_HEADER = b":W&B\xe1\xbe\x00"  # ident, magic 0xBEE1, version 0
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
W_AND_B_KEYS = ("_step", "_runtime", "_timestamp")  # W&B's own columns


def wandb_records(path):
  """The records of an offline run file, in the order written."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=import-outside-toplevel
  data = open(path, "rb").read()
  assert data[:len(FILE_HEADER)] == FILE_HEADER, path
  position, parts = len(FILE_HEADER), []
  while position + 7 <= len(data):
    if BLOCK - position % BLOCK < 7:  # the block's tail is padding
      position += BLOCK - position % BLOCK
      continue
    _, length, kind = struct.unpack("<IHB", data[position:position + 7])
    parts.append(data[position + 7:position + 7 + length])
    position += 7 + length
    if kind in (FULL, LAST):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(b"".join(parts))
      parts = []
      yield record
    else:
      assert kind in (FIRST, MIDDLE), (path, position, kind)


class OfflineRun(NamedTuple):
  record: object  # its wandb_internal_pb2.RunRecord: id, project, group, job type
  config: dict  # {dotted name: value}
  history: list  # [{name: value}] in the order logged, without W&B's own columns
  exit_code: int | None  # None: not finished


def offline_runs(folder) -> list[OfflineRun]:
  """The offline runs W&B wrote under `folder`, in the order they started (as
  `wandb sync` takes them)."""
  import wandb  # pylint: disable=import-outside-toplevel
  wandb.teardown()  # `finish()` returns before W&B's service has written the file out
  runs = []
  for path in glob.glob(f"{folder}/wandb/offline-run-*/run-*.wandb"):
    run, history, exit_code = None, [], None
    for record in wandb_records(path):
      kind = record.WhichOneof("record_type")
      if kind == "run":
        run = record.run
      elif kind == "history":
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
               for item in record.history.item}
        history.append({k: v for k, v in row.items() if k not in W_AND_B_KEYS})
      elif kind == "exit":
        exit_code = record.exit.exit_code
    config = {item.key: json.loads(item.value_json) for item in run.config.update
              if item.key != "_wandb"}
    runs.append(OfflineRun(run, config_lib.flat_fields(config_lib.from_json(json.dumps(config))),
                           history, exit_code))
  return sorted(runs, key=lambda r: r.record.start_time.ToNanoseconds())


def as_tensorboard_tags(row):
  """A metrics.jsonl record as {TensorBoard tag: value}: its scalars that are not None."""
  return {(f"eval/{k.removeprefix('eval_')}" if k.startswith("eval_") else f"train/{k}"): v
          for k, v in row.items() if k != "step" and v is not None}


def stored_id(folder):
  return json.loads((folder / tracking.RUN_FILE).read_text())["id"]


@pytest.fixture
def offline(tmp_path, monkeypatch):
  """W&B kept off the network and out of the home directory."""
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
    monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
  monkeypatch.delenv("WANDB_API_KEY", raising=False)


def wandb_config(**overrides):
  return small_config(**{"metrics.wandb_project": "phd-tests", "metrics.wandb_mode": "offline",
                         **overrides})


@pytest.mark.slow  # W&B starts its service process
def test_offline_run_holds_the_scalars_of_metrics_jsonl_and_the_config(tmp_path, offline):
  config = wandb_config(mesh=(8, 1, 1), num_steps=6, log_every=2, eval_every=3,
                        eval_batches=1, eval_tasks="arc_easy", eval_limit=3,
                        eval_data_dir=eval_data_dir(tmp_path),
                        **{"model.vocab_size": 384, "checkpoint.every": 3})
  workdir = tmp_path / "run"
  train.train(config, str(workdir))
  [run] = offline_runs(workdir)
  expected = [{"step": r["step"], **as_tensorboard_tags(r)} for r in read_metrics(workdir)]
  assert [r["step"] for r in expected] == [2, 3, 4, 6, 6]  # eval at 3 and 6 included
  assert {"eval/loss", "eval/arc_easy", "train/loss", "train/lr"} <= set().union(*expected)
  assert run.history == expected
  saved = config_lib.flat_fields(config_lib.from_json((workdir / "config.json").read_text()))
  assert run.config == saved
  assert run.record.run_id == stored_id(workdir)
  assert (run.record.project, run.record.run_group, run.record.job_type, run.exit_code) == (
      "phd-tests", run.record.run_id, "train", 0)
  # the evaluator job on the finished run: its own W&B run, in the training run's group,
  # holding what it wrote to results.jsonl
  follow.follow(workdir, follow.Settings(tasks=("loss",), loss_batches=1, progress=False))
  [evaluator] = offline_runs(workdir / EVAL_DIR)
  results = ResultsLog(workdir / EVAL_DIR / RESULTS_FILE).records
  assert [r["step"] for r in results] == [3, 6]
  assert evaluator.history == [{"step": r["step"], **suite.scalars(r["results"])}
                               for r in results]
  assert (evaluator.record.run_group, evaluator.record.job_type, evaluator.exit_code) == (
      run.record.run_id, "eval", 0)


@pytest.mark.slow  # W&B starts its service process
def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, offline, monkeypatch):
  config = wandb_config(mesh=(8, 1, 1), num_steps=6, log_every=1,
                        **{"checkpoint.async_save": False})
  workdir = tmp_path / "run"
  with monkeypatch.context() as patch:
    patch.setattr(train.PreemptionGuard, "reached", lambda self, step: step == 3)
    assert train.train(config, str(workdir))["status"] == "preempted"
  assert train.train(config, str(workdir))["restored"] is not None
  first, resumed = offline_runs(workdir)
  assert first.record.run_id == resumed.record.run_id == stored_id(workdir)
  assert [r["step"] for r in first.history] == [1, 2, 3]
  assert [r["step"] for r in resumed.history] == [4, 5, 6]
  expected = [{"step": r["step"], **as_tensorboard_tags(r)} for r in read_metrics(workdir)]
  assert first.history + resumed.history == expected


@pytest.mark.slow  # W&B starts its service process
def test_the_evaluator_logs_to_its_own_run_in_the_training_runs_group(tmp_path, offline):
  config, workdir = wandb_config(), tmp_path / "run"
  evaluator = tracking.open_wandb(config, str(workdir), job_type="eval",
                                   eval_dir=str(workdir / EVAL_DIR))  # before the trainer
  trainer = tracking.open_wandb(config, str(workdir))
  trainer.write(10, {"loss": 2.5}, prefix="train")
  trainer.close()
  evaluator.write(10, {"eval/loss": 3.0, "eval/arc_easy": None})  # tagged, as follow.py has
  evaluator.close()
  restarted = tracking.open_wandb(config, str(workdir), job_type="eval",
                                   eval_dir=str(workdir / EVAL_DIR))
  restarted.write(20, {"eval/loss": 2.0})
  restarted.close()
  [train_run] = offline_runs(workdir)
  eval_runs = offline_runs(workdir / EVAL_DIR)
  assert train_run.history == [{"step": 10, "train/loss": 2.5}]
  assert [run.history for run in eval_runs] == [[{"step": 10, "eval/loss": 3.0}],
                                                [{"step": 20, "eval/loss": 2.0}]]
  train_id, eval_id = stored_id(workdir), stored_id(workdir / EVAL_DIR)
  assert eval_id != train_id == train_run.record.run_id
  for run in eval_runs:
    assert (run.record.run_id, run.record.run_group, run.record.job_type) == (
        eval_id, train_id, "eval")


@pytest.mark.slow  # W&B starts its service process
def test_an_exception_in_training_marks_the_wandb_run_failed(tmp_path, offline):
  with pytest.raises(FloatingPointError):
    with Writer(str(tmp_path), tracker=tracking.open_wandb(wandb_config(), str(tmp_path))) as w:
      w.write(1, {"loss": 2.0})
      raise FloatingPointError("loss is NaN")  # as train.check_finite would
  with Writer(str(tmp_path), tracker=tracking.open_wandb(wandb_config(), str(tmp_path))) as w:
    w.write(2, {"loss": 1.0})
  assert [run.exit_code for run in offline_runs(tmp_path)] == [1, 0]


def test_no_wandb_run_without_a_project_or_off_process_0(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # any attempt to import it fails
  assert tracking.open_wandb(small_config(), str(tmp_path)) is None
  monkeypatch.setattr(tracking.jax, "process_index", lambda: 1)
  assert tracking.open_wandb(wandb_config(), str(tmp_path)) is None
  assert not list(tmp_path.iterdir())


def test_a_project_without_wandb_installed_fails_in_one_line_before_training(
    tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)
  with pytest.raises(config_lib.ConfigError) as error:
    train.train(wandb_config(), str(tmp_path / "run"))
  message = str(error.value)
  assert "\n" not in message
  assert "metrics.wandb_project='phd-tests'" in message and "pip install wandb" in message
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field,value,expected", [
    ("metrics.wandb_mode", "offfline", "metrics.wandb_mode must be one of"),
    ("metrics.wandb_entity", None, "metrics.wandb_entity must be a string"),
])
def test_bad_wandb_settings_are_refused_naming_the_field(field, value, expected):
  with pytest.raises(config_lib.ConfigError, match=expected):
    config_lib.validate(small_config(**{field: value}), files=False)


def test_a_config_saved_before_the_metrics_group_still_validates():
  config = small_config()
  del config["metrics"]
  config_lib.validate(config, training=False, files=False)
  assert tracking.open_wandb(config, "unused") is None
