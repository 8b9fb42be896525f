"""The comparison report reads runs' files as training and evaluation write them: means and
standard errors over seeds, paired differences (per budget), runs of different lengths,
failed and unfinished runs listed (never averaged), damaged runs named and left out, task
and answer-accuracy columns, the evaluator's results joined with the loop's, inference
costs, the plots."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from phd_jax import compare, defaults, plots, run_results
from phd_jax.eval import results_log
from phd_jax import config as config_lib

PNG = b"\x89PNG\r\n\x1a\n"
# The model of test_flops's costs worked by hand.
HAND_MODEL = dict(vocab_size=10, d_model=4, num_layers=2, num_heads=2, num_kv_heads=1,
                  head_dim=2, mlp_dim=6)


def write_run(root, name, *, variant="Vanilla", seed=0, num_steps=4, evals=(), steps=None,
              status=None, source="stdlib", extra_files=None):
  """A run folder as `phd_jax.main` leaves it: config.json and metrics.jsonl (train lines
  every step, eval lines at `evals` = [(step, loss, bits per byte)])."""
  path = os.path.join(root, name, f"seed{seed}")
  os.makedirs(path)
  config = defaults.get_config(variant)
  config.model.update(HAND_MODEL)
  config.update(seed=seed, num_steps=num_steps, eval_every=2, batch_size=4, seq_len=8)
  config.data.source = source
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
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


def run_compare(*args):
  return subprocess.run([sys.executable, "-m", "phd_jax.compare", *args],
                        capture_output=True, text=True, timeout=300)


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
  (md, tokens_png, flops_png), damaged = compare.write_report([runs], str(tmp_path / "out"),
                                                              "cmp")
  assert damaged == []
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
    assert open(png, "rb").read(8) == PNG and os.path.getsize(png) > 10_000


def test_task_and_answer_columns(tmp_path):
  root = str(tmp_path)
  report = {"results": {"loss": {"loss": 2.0}, "piqa": {"acc": 0.6, "acc_norm": 0.62,
                                                        "metric": "acc_norm"}}}
  write_run(root, "Vanilla", evals=[(4, 2.0, None)], source="pointer_chase",
            extra_files={"chase.json": {"accuracy": 0.25, "answer_loss": 1.5},
                         "eval_step4.json": report, "eval_step2.json": {"results": {}}})
  write_run(root, "PHD-2", variant="PHD-2", evals=[(4, 1.9, None)], source="pointer_chase",
            extra_files={"chase.json": {"accuracy": 0.5, "answer_loss": 1.0}})
  table = open(compare.write_report([root], root)[0][0]).read()
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
  run = run_results.read_run(path)
  assert run.state == "complete"
  assert run.evals == [(2, 3.0, 4.0), (4, 2.45, 3.4)]  # the resumed evaluation counts
  assert run.train_time_s == 4 * 0.5
  with open(os.path.join(path, "metrics.jsonl"), "a") as f:  # resumed again after the cut
    f.write(json.dumps({"step": 4, "loss": 3.0, "step_time": 0.5}) + "\n")  # joins the cut
    f.write(json.dumps({"step": 4, "eval_loss": 2.40, "eval_bits_per_byte": 3.3}) + "\n")
  assert run_results.read_run(path).evals[-1] == (4, 2.40, 3.3)  # lines after a cut count


def test_no_runs_is_an_error(tmp_path, capsys):
  with pytest.raises(SystemExit):
    compare.main([str(tmp_path)])
  assert "no runs" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    compare.main([str(tmp_path / "missing")])
  assert "no such directory" in capsys.readouterr().err


def test_runs_a_sweep_links_from_another_are_found_once(tmp_path):
  shared = str(tmp_path / "frontier")
  vanilla = write_run(shared, "Vanilla", evals=[(4, 2.5, 3.6)], status="done")
  wide = write_run(shared, "Wide", evals=[(4, 2.3, 3.3)], status="done")
  loops = tmp_path / "loops"
  plt_run = write_run(str(loops), "PLT-2-4", variant="PLT-2-4", evals=[(4, 2.6, 3.7)])
  os.symlink("../frontier/Vanilla", loops / "Vanilla")
  os.symlink("..", loops / "up")  # a link above itself is walked once, not forever
  assert run_results.find_runs([str(loops)]) == sorted(
      [plt_run, str(loops / "Vanilla" / "seed0"), os.path.join(loops, "up", "frontier", "Wide",
                                                                 "seed0")])
  # both sweeps named: the linked Vanilla is one run, under the name met first
  assert run_results.find_runs([shared, str(loops)]) == sorted([vanilla, wide, plt_run])
  (md, *_), _ = compare.write_report([str(loops)], str(tmp_path / "out"), "loops")
  assert row(open(md).read(), "Vanilla")[2] == "1/1"


@pytest.mark.slow
def test_damaged_runs_are_named_and_the_rest_reported(tmp_path):
  """A cut config.json and an empty sweep_status.json: each run is named with its file and
  reason (stderr and the report), the others are reported, and the exit status is 1."""
  root = str(tmp_path / "sweep")
  for seed in (0, 1):
    write_run(root, "Vanilla", seed=seed, evals=[(2, 3.0, 4.3), (4, 2.5, 3.6)], status="done")
  write_run(root, "PHD-2", variant="PHD-2", evals=[(2, 2.9, 4.2), (4, 2.4, 3.5)])
  cut = write_run(root, "PHD-3", variant="PHD-3", evals=[(4, 2.3, 3.4)])
  text = open(os.path.join(cut, "config.json")).read()
  with open(os.path.join(cut, "config.json"), "w") as f:
    f.write(text[:len(text) // 2])
  with pytest.raises(json.JSONDecodeError) as error:
    json.loads(text[:len(text) // 2])
  empty = write_run(root, "PHD-4", variant="PHD-4", evals=[(4, 2.2, 3.3)], status="done")
  open(os.path.join(empty, "sweep_status.json"), "w").close()
  out = str(tmp_path / "out")

  result = run_compare(root, f"--output_dir={out}")
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  reasons = [f"{cut}: config.json: {error.value}", f"{empty}: sweep_status.json is empty"]
  assert result.stderr.splitlines() == [f"damaged run left out: {r}" for r in reasons]
  table = open(os.path.join(out, "comparison.md")).read()
  summary, damaged = table.split("## Inference cost")[0], table.split("## Damaged runs")[1]
  assert row(summary, "Vanilla")[2] == "2/2" and row(summary, "PHD-2")[2] == "1/1"
  assert "| PHD-3 |" not in summary and "| PHD-4 |" not in summary
  listed = [line for line in damaged.split("## Runs")[0].splitlines() if line.startswith("- ")]
  assert listed == [f"- {r}" for r in reasons]
  assert result.stdout.startswith("# Comparison")

  result = run_compare(os.path.join(root, "PHD-3"))  # nothing readable: nothing written
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.splitlines()[-1].endswith(f"no readable runs under "
                                                 f"['{os.path.join(root, 'PHD-3')}']: "
                                                 f"{reasons[0]}")
  assert not os.path.exists(os.path.join(root, "PHD-3", "comparison.md"))


@pytest.mark.slow
def test_inference_costs_and_their_plots(tmp_path):
  """The cost table holds test_flops's hand-worked values of the runs' model at --context
  tokens, and the loss is drawn against each axis."""
  root = str(tmp_path)
  for seed in (0, 1):
    write_run(root, "Vanilla", seed=seed, evals=[(4, 2.5 + seed / 10, None)])
    write_run(root, "PHD-2", variant="PHD-2", seed=seed, evals=[(4, 2.4 + seed / 10, None)])
  swa = "PHD-SWA-3-2-inf"
  write_run(root, swa, variant=swa, evals=[(4, 2.3, None)])
  write_run(root, swa, variant=swa, seed=1, steps=3, evals=[(2, 2.6, None)])
  axes = "tokens,train_flops,decode_flops,inference_memory"
  result = run_compare(root, f"--x={axes}", "--context=5")
  assert result.returncode == 0, result.stderr
  table = open(os.path.join(root, "comparison.md")).read().split("## Inference cost")[1]
  # parameters, KV bytes per token, window, decode, prefill (the last 3 tokens' copies for
  # SWA over 2 layers), parameters in float32 + 5 tokens' KV + the window
  assert row(table, "Vanilla")[1:] == ["1", "352", "32B", "0B", "752", "2.96k", "1.57kB"]
  assert row(table, "PHD-2")[1:] == ["2", "352", "32B", "0B", "1.46k", "3.63k", "1.57kB"]
  assert row(table, swa)[1:] == ["3", "352", "32B", "64B", "2.29k", "7.09k", "1.63kB"]
  for axis in axes.split(","):
    png = os.path.join(root, f"comparison_loss_vs_{axis}.png")
    assert open(png, "rb").read(8) == PNG and os.path.getsize(png) > 10_000, axis

  runs, _ = run_results.read_runs([root], context=5)
  points = plots.cost_points(compare.group(runs, "Vanilla"), "decode_flops")
  mean, se = np.mean([2.4, 2.5]), np.std([2.4, 2.5], ddof=1) / np.sqrt(2)
  assert points[1][:2] == ("PHD-2", 1456) and points[1][2] == pytest.approx((mean, se))
  assert points[2] == (swa, 2288, (2.3, None), [2.6])  # the unfinished run apart


def test_budgets_pair_with_the_baseline_of_the_same_settings(tmp_path):
  """Variants at several budgets (`@settings`, as the sweep names them): each is paired by
  seed with the baseline at its own budget, rows in numeric order of the settings."""
  root = str(tmp_path)
  budgets = {8: (2.6, 2.5), 16: (2.3, 2.2)}  # Vanilla's, PHD-2's final loss (seed 0)
  for steps, (vanilla, phd) in budgets.items():
    at = f"@data.train_tokens={steps * 100}@num_steps={steps}"
    for seed in (0, 1):
      write_run(root, f"Vanilla{at}", seed=seed, num_steps=steps,
                evals=[(steps, vanilla + seed / 100, None)])
      write_run(root, f"PHD-2{at}", variant="PHD-2", seed=seed, num_steps=steps,
                evals=[(steps, phd + seed / 50, None)])
  table = open(compare.write_report([root], root)[0][0]).read().split("## Inference")[0]
  labels = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
  assert labels[1:] == ["Vanilla@data.train_tokens=800@num_steps=8",  # 800 before 1600
                        "Vanilla@data.train_tokens=1600@num_steps=16",
                        "PHD-2@data.train_tokens=800@num_steps=8",
                        "PHD-2@data.train_tokens=1600@num_steps=16"]
  deltas = [-0.1 + 0.0, -0.1 + 0.01]  # per seed: PHD-2 - Vanilla at the same budget
  se = np.std(deltas, ddof=1) / np.sqrt(2)
  against = "Vanilla@data.train_tokens=1600@num_steps=16"
  assert row(table, "PHD-2@data.train_tokens=1600@num_steps=16")[7] == (
      f"{np.mean(deltas):+.4f} ± {se:.4f} (n=2, vs {against})")
  assert row(table, against)[7] == "–"  # no plain Vanilla to pair it with


def test_final_loss_against_a_swept_setting(tmp_path):
  """`--x=setting:NAME`: one line per variant (its other settings kept in its name), a point
  per value of NAME at the mean ± standard error of its complete runs' final losses;
  labels without NAME are left out."""
  root = str(tmp_path)
  final = {("Vanilla", 2): (2.6, 2.7), ("Vanilla", 8): (2.2, 2.3), ("PHD-2", 2): (2.5, 2.4)}
  for (variant, budget), losses in final.items():
    for seed, loss in enumerate(losses):
      write_run(root, f"{variant}@budget_epochs={budget}@num_steps=4", variant=variant,
                seed=seed, evals=[(2, 3.5, None), (4, loss, None)], status="done")
  write_run(root, "Vanilla", evals=[(4, 9.0, None)], status="done")  # no budget: left out
  write_run(root, "PHD-2@budget_epochs=4@num_steps=4", variant="PHD-2", steps=2,
            evals=[(2, 9.0, None)])  # unfinished: no point
  groups = compare.group(run_results.read_runs([root])[0], "Vanilla")
  se = lambda a, b: np.std([a, b], ddof=1) / np.sqrt(2)
  points = plots.setting_points(groups, "budget_epochs")
  assert set(points) == {"Vanilla@num_steps=4", "PHD-2@num_steps=4"}
  for variant, budgets in (("Vanilla", (2, 8)), ("PHD-2", (2,))):
    assert [x for x, _ in points[f"{variant}@num_steps=4"]] == list(budgets)
    for (x, (mean, error)), budget in zip(points[f"{variant}@num_steps=4"], budgets):
      losses = final[(variant, budget)]
      assert mean == pytest.approx(np.mean(losses)) and error == pytest.approx(se(*losses))
  assert compare.main([root, "--x=setting:budget_epochs", "--output_dir", root]) == 0
  with open(os.path.join(root, "comparison_loss_vs_budget_epochs.png"), "rb") as f:
    assert f.read(8) == PNG
  with pytest.raises(SystemExit) as exit_:  # a setting no run has
    compare.main([root, "--x=setting:lr", "--output_dir", root])
  assert exit_.value.code == 2


def test_bad_axis_is_refused_before_reading(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_:
    compare.main([str(tmp_path / "missing"), "--x=tokens,latency"])
  assert exit_.value.code == 2
  assert "--x='tokens,latency': axes are tokens, train_flops, decode_flops, " \
         "inference_memory or setting:NAME" in capsys.readouterr().err


def write_evaluator_lines(path, lines):
  """`eval/results.jsonl` of a run as `phd_jax.evaluate --follow` writes it: (step, loss,
  bits per byte, piqa acc_norm or None) evaluated, or (step, "skipped")."""
  log = results_log.ResultsLog(os.path.join(path, "eval", "results.jsonl"))
  for step, *values in lines:
    if values == ["skipped"]:
      log.append({"step": step, "checkpoint": f"{path}/checkpoints/{step}",
                  "skipped": "checkpoint is corrupted", "commit_time": 1})
      continue
    loss, bpb, piqa = values
    results = {"loss": {"loss": loss, "perplexity": np.exp(loss), "bits_per_byte": bpb,
                        "targets": 10, "bytes": 30}}
    if piqa is not None:
      results["piqa"] = {"acc": 0.5, "acc_norm": piqa, "metric": "acc_norm"}
    log.append({"step": step, "checkpoint": f"{path}/checkpoints/{step}", "results": results,
                "settings": {"tasks": list(results)}, "average": piqa})


def test_evaluator_results_join_the_in_loop_ones(tmp_path):
  """The evaluator's loss and tasks join the training loop's by step (the evaluator's
  counting at a step both evaluated); skipped steps and a cut line are left out; the
  newest task results are shown, with their source; a run whose evaluator has not reached
  the final step is not complete."""
  root = str(tmp_path / "sweep")
  both = write_run(root, "Vanilla", seed=0, evals=[(2, 3.0, 4.3), (4, 2.6, 3.9)])
  write_evaluator_lines(both, [(2, 2.9, 4.2, 0.55), (3, "skipped"), (4, 2.5, 3.6, 0.6)])
  with open(os.path.join(both, "eval", "results.jsonl"), "a") as f:
    f.write('{"step": 6, "results": {"lo')  # the evaluator was killed mid-line
  loop_then_evaluator = write_run(root, "Vanilla", seed=1, evals=[(2, 3.1, 4.4)])
  write_evaluator_lines(loop_then_evaluator, [(4, 2.7, 3.8, None)])
  # Trained without in-loop evaluation; its evaluator has reached step 2 of 4.
  lagging = write_run(root, "PHD-2", variant="PHD-2", seed=0)
  with open(os.path.join(lagging, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(lagging, "config.json"), "w") as f:
    json.dump({**config, "eval_every": 0}, f)
  write_evaluator_lines(lagging, [(2, 2.8, 4.0, 0.7)])

  run = run_results.read_run(both)
  assert (run.state, run.evals) == ("complete", [(2, 2.9, 4.2), (4, 2.5, 3.6)])
  assert run.tasks == {"piqa": 0.6} and run.task_curves == {"piqa": [(2, 0.55), (4, 0.6)]}
  assert run.sources == "loss: evaluator 2; tasks: evaluator at step 4"
  run = run_results.read_run(loop_then_evaluator)
  assert (run.state, run.evals) == ("complete", [(2, 3.1, 4.4), (4, 2.7, 3.8)])
  assert run.sources == "loss: in-loop 1, evaluator 1" and run.tasks == {}
  run = run_results.read_run(lagging)
  assert (run.state, run.evals, run.tasks) == ("incomplete", [(2, 2.8, 4.0)], {"piqa": 0.7})

  # A single `phd_jax.evaluate` report of the same step wins the tie.
  with open(os.path.join(both, "eval_step4.json"), "w") as f:
    json.dump({"results": {"piqa": {"acc": 0.5, "acc_norm": 0.65, "metric": "acc_norm"}}}, f)
  run = run_results.read_run(both)
  assert run.tasks == {"piqa": 0.65} and run.task_curves == {"piqa": [(2, 0.55), (4, 0.65)]}
  assert run.sources == "loss: evaluator 2; tasks: eval_step4.json"

  md, *pngs = compare.write_report([root], str(tmp_path / "out"), "cmp", axes=("tokens",))[0]
  table = open(md).read()
  assert row(table, "Vanilla")[2] == "2/2" and row(table, "PHD-2")[2] == "0/1"
  se = np.std([2.5, 2.7], ddof=1) / np.sqrt(2)
  assert row(table, "Vanilla")[5] == f"{np.mean([2.5, 2.7]):.4f} ± {se:.4f}"  # the evaluator's
  assert f"| {both} | Vanilla | 0 | complete | 4/4 | 2: 2.9000, 4: 2.5000 | loss: evaluator " \
         "2; tasks: eval_step4.json |" in table
  assert [os.path.basename(p) for p in pngs] == ["cmp_loss_vs_tokens.png",
                                                 "cmp_tasks_vs_tokens.png"]
  for png in pngs:
    assert open(png, "rb").read(8) == PNG and os.path.getsize(png) > 10_000
