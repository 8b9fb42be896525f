"""The comparison report reads runs' files as training and evaluation write them: means and
standard errors over seeds, paired differences, runs of different lengths, failed and
unfinished runs listed (never averaged), task and answer-accuracy columns, the plots."""

import json
import os

import numpy as np
import pytest

from phd_jax import compare


def write_run(root, name, *, variant="Vanilla", seed=0, num_steps=4, evals=(), steps=None,
              status=None, source="stdlib", extra_files=None):
  """A run folder as `phd_jax.main` leaves it: config.json and metrics.jsonl (train lines
  every step, eval lines at `evals` = [(step, loss, bits per byte)])."""
  path = os.path.join(root, name, f"seed{seed}")
  os.makedirs(path)
  config = {"phd": {"variant": variant}, "seed": seed, "num_steps": num_steps,
            "eval_every": 2, "batch_size": 4, "seq_len": 8, "data": {"source": source}}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  by_step = {s: (loss, bpb) for s, loss, bpb in evals}
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for step in range(1, (num_steps if steps is None else steps) + 1):
      f.write(json.dumps({"step": step, "loss": 3.0, "step_time": 0.5,
                          "model_flops_per_step": 1e9}) + "\n")
      if step in by_step:
        f.write(json.dumps({"step": step, "eval_loss": by_step[step][0],
                            "eval_bits_per_byte": by_step[step][1]}) + "\n")
  if status:
    with open(os.path.join(path, "sweep_status.json"), "w") as f:
      json.dump({"status": status, "variant": name, "seed": seed, "wall_s": 12.0}, f)
  for file_name, content in (extra_files or {}).items():
    with open(os.path.join(path, file_name), "w") as f:
      json.dump(content, f)
  return path


def row(table, label):
  line = next(l for l in table.splitlines() if l.startswith(f"| {label} |"))
  return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.fixture
def runs(tmp_path):
  root = str(tmp_path / "sweep")
  write_run(root, "Vanilla", seed=0, evals=[(2, 3.0, 4.3), (4, 2.50, 3.6)], status="done")
  write_run(root, "Vanilla", seed=1, evals=[(2, 3.1, 4.4), (4, 2.60, 3.8)], status="done")
  write_run(root, "PHD-2", variant="PHD-2", seed=0, evals=[(2, 2.9, 4.2), (4, 2.40, 3.5)])
  write_run(root, "PHD-2", variant="PHD-2", seed=1, evals=[(2, 3.0, 4.3), (4, 2.56, 3.7)])
  # Twice as long; and its best loss is not its last.
  write_run(root, "Vanilla@num_steps=8", seed=0, num_steps=8,
            evals=[(2, 3.0, 4.3), (4, 2.4, 3.5), (6, 2.2, 3.2), (8, 2.3, 3.3)])
  # Killed at step 3 (one evaluation), and one that failed at once.
  write_run(root, "PHD-3", variant="PHD-3", seed=0, steps=3, evals=[(2, 2.8, 4.0)])
  write_run(root, "PHD-3", variant="PHD-3", seed=1, steps=0, status="failed")
  return root


def test_table_numbers_come_from_the_metrics(runs, tmp_path):
  md, tokens_png, flops_png = compare.write_report([runs], str(tmp_path / "out"), "cmp")
  table = open(md).read()
  vanilla = row(table, "Vanilla")
  assert vanilla[2] == "2/2"
  assert vanilla[5] == f"{np.mean([2.5, 2.6]):.4f} ± {np.std([2.5, 2.6], ddof=1) / np.sqrt(2):.4f}"
  assert vanilla[8] == f"{np.mean([3.6, 3.8]):.4f} ± {np.std([3.6, 3.8], ddof=1) / np.sqrt(2):.4f}"
  phd2 = row(table, "PHD-2")
  deltas = [2.40 - 2.50, 2.56 - 2.60]
  assert phd2[7] == (f"{np.mean(deltas):+.4f} ± "
                     f"{np.std(deltas, ddof=1) / np.sqrt(2):.4f} (n=2)")
  longer = row(table, "Vanilla@num_steps=8")
  assert longer[1:5] == ["1", "1/1", "256", "8G"]  # 8 steps x 4 x 8 tokens; 8 x 1e9 FLOPs
  assert longer[5:7] == ["2.3000", "2.2000"]  # final, best
  assert longer[7] == "-0.2000 (n=1)"  # paired with Vanilla seed 0
  assert longer[-1] == "4"  # 8 steps x 0.5 s
  assert row(table, "PHD-3")[2:] == ["0/2"] + ["–"] * (len(vanilla) - 3)
  runs_section = table.split("## Runs")[1]
  assert "| PHD-3 | 0 | incomplete | 3/4 | 2: 2.8000 |" in runs_section
  assert "| PHD-3 | 1 | failed | 0/4 | – |" in runs_section
  for png in (tokens_png, flops_png):
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10_000


def test_task_and_answer_columns(tmp_path):
  root = str(tmp_path)
  report = {"results": {"loss": {"loss": 2.0}, "piqa": {"acc": 0.6, "acc_norm": 0.62,
                                                        "metric": "acc_norm"}}}
  write_run(root, "Vanilla", evals=[(4, 2.0, None)], source="pointer_chase",
            extra_files={"chase.json": {"accuracy": 0.25, "answer_loss": 1.5},
                         "eval_step4.json": report, "eval_step2.json": {"results": {}}})
  write_run(root, "PHD-2", variant="PHD-2", evals=[(4, 1.9, None)], source="pointer_chase",
            extra_files={"chase.json": {"accuracy": 0.5, "answer_loss": 1.0}})
  table = open(compare.write_report([root], root)[0]).read()
  header = [c.strip() for c in table.splitlines()[4].strip("|").split("|")]
  assert "bits per byte" not in header  # token sources have no bytes
  vanilla = dict(zip(header, row(table, "Vanilla")))
  assert (vanilla["answer accuracy"], vanilla["answer loss"], vanilla["piqa"]) == (
      "0.250", "1.5000", "0.620")
  phd2 = dict(zip(header, row(table, "PHD-2")))
  assert (phd2["answer accuracy"], phd2["piqa"]) == ("0.500", "–")


def test_a_run_cut_mid_line_and_resumed_steps(tmp_path):
  """A killed run's last metrics line may be cut short; a resumed run logs steps again:
  neither breaks the report or counts time twice."""
  path = write_run(str(tmp_path), "Vanilla", num_steps=4, evals=[(2, 3.0, 4.0), (4, 2.5, 3.5)])
  with open(os.path.join(path, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": 3, "loss": 3.0, "step_time": 0.5}) + "\n")
    f.write(json.dumps({"step": 4, "eval_loss": 2.45, "eval_bits_per_byte": 3.4}) + "\n")
    f.write('{"step": 4, "eval_lo')
  run = compare.read_run(path)
  assert run.state == "complete"
  assert run.evals == [(2, 3.0, 4.0), (4, 2.45, 3.4)]  # the resumed evaluation counts
  assert run.train_time_s == 4 * 0.5


def test_no_runs_is_an_error(tmp_path, capsys):
  with pytest.raises(SystemExit):
    compare.main([str(tmp_path)])
  assert "no runs" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    compare.main([str(tmp_path / "missing")])
  assert "no such directory" in capsys.readouterr().err
