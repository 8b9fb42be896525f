"""Evaluate a checkpoint: held-out loss and the paper's seven zero-shot tasks.

  python -m phd_jax.evaluate --workdir=workdirs/tiny --tasks=all --data_dir=eval_data
  python -m phd_jax.evaluate --checkpoint=RUN/checkpoints/600 --tasks=loss,hellaswag --limit=200

Restores only the parameters (the newest complete step of a workdir, a step folder or an
export) onto a mesh of the devices at hand, with the config saved in the checkpoint.
`loss`: loss, perplexity and bits per byte on `loss_batches` batches of the run's validation
split. Each task: zero-shot multiple choice by the summed log-likelihood of each option,
acc and acc_norm (per character) with standard errors; the table's "reported" column is the
metric the paper reports (PAPER.md). Results go to `eval_step<N>.json` and `.md` in the
workdir (or --output_dir) and to stdout. Task data: `<data_dir>/<task>/<task>.jsonl`
records `{"id", "context", "choices", "label"}` (README: where to get them).

For training loops, `in_loop(model, config, mesh, ...)` returns the same numbers as a flat
dict of metrics.
"""

from __future__ import annotations

import argparse
import os

import jax
from flax import nnx

from phd_jax import checkpoint, data, sharding, train
from phd_jax.eval import heldout, report
from phd_jax.eval.scorer import Scorer
from phd_jax.eval.tasks import TASKS, evaluate_task, load_task

DEFAULT_DATA_DIR = "eval_data"
CHOICES = ("loss",) + tuple(TASKS)


def parse_tasks(text: str) -> list[str]:
  """`all`, or comma-separated names out of `loss` and the task names."""
  names = list(CHOICES) if text.strip() == "all" else [t.strip() for t in text.split(",")]
  unknown = [n for n in names if n not in CHOICES]
  if unknown or not names:
    raise ValueError(f"--tasks: unknown {unknown}; choose from all, {', '.join(CHOICES)}")
  return names


def parse_mesh(text: str) -> tuple[int, int, int]:
  try:
    sizes = tuple(int(x) for x in text.split(","))
  except ValueError:
    sizes = ()
  if len(sizes) != 3:
    raise ValueError(f"--mesh must be DATA,FSDP,TENSOR sizes such as 1,-1,1; got {text!r}")
  return sizes


def eval_mesh(config, sizes: tuple[int, int, int]):
  """The training mesh machinery over this machine's devices, with these axis sizes."""
  config = config.copy_and_resolve_references()
  for axis, size in zip(sharding.AXES, sizes):
    config.mesh[axis], config.mesh[f"dcn_{axis}"] = size, 1
  return sharding.make_mesh(config)


def load_model(path, mesh_sizes=(1, -1, 1)):
  """(model, config, mesh, checkpoint folder): params only, sharded over a new mesh."""
  folder = checkpoint.resolve(path)
  config = checkpoint.load_config(folder)
  mesh = eval_mesh(config, mesh_sizes)
  params = checkpoint.load_params(folder, train.abstract_state(config, mesh).params)
  return train.model_from_params(config, params), config, mesh, folder


def evaluate(model, config, mesh, tasks, *, data_dir: str = DEFAULT_DATA_DIR,
             limit: int | None = None, loss_batches: int | None = None,
             batch_size: int | None = None, seq_len: int | None = None,
             progress: bool = False) -> dict:
  """Results per name in `tasks` ("loss" and task names), scored on `mesh`.

  Defaults: the config's eval_batches, training microbatch (batch_size / microbatches rows)
  and seq_len.
  """
  examples = {name: load_task(data_dir, name, limit) for name in tasks if name != "loss"}
  scorer = Scorer(model, seq_len=seq_len or config.seq_len, mesh=mesh, progress=progress,
                  batch_size=batch_size or config.batch_size // config.microbatches)
  results = {}
  if "loss" in tasks:
    results["loss"] = heldout.heldout_loss(scorer, config, loss_batches or config.eval_batches)
  if examples:
    tokenizer = data.make_tokenizer(config)
    data.check_vocab(tokenizer, config)
  for name, task_examples in examples.items():
    results[name] = {**evaluate_task(task_examples, scorer, tokenizer, desc=name),
                     "metric": TASKS[name].metric}
  return results


def in_loop(model_or_params, config, mesh=None, *, tasks=("loss",), limit: int | None = None,
            data_dir: str = DEFAULT_DATA_DIR, loss_batches: int | None = None) -> dict:
  """Metrics to log during training: `eval/loss`, `eval/perplexity`, `eval/bits_per_byte`
  (when "loss" is in `tasks`), `eval/<task>` (the paper's metric of each task, on its first
  `limit` examples) and `eval/average`.

  model_or_params: the model, or the train state's params. mesh: the one the params live
  on (None: one device). Compiles once: later calls with the same shapes reuse the forward.
  """
  model = model_or_params
  if not isinstance(model, nnx.Module):
    model = train.model_from_params(config, model)
  results = evaluate(model, config, mesh, tasks, data_dir=data_dir, limit=limit,
                     loss_batches=loss_batches)
  metrics = {}
  if "loss" in results:
    for key in ("loss", "perplexity", "bits_per_byte"):
      if results["loss"][key] is not None:
        metrics[f"eval/{key}"] = results["loss"][key]
  for name in TASKS:
    if name in results:
      metrics[f"eval/{name}"] = results[name][results[name]["metric"]]
  if (average := report.paper_average(results)) is not None:
    metrics["eval/average"] = average
  return metrics


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m phd_jax.evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  where = p.add_mutually_exclusive_group(required=True)
  where.add_argument("--workdir", help="a training run: its newest complete checkpoint")
  where.add_argument("--checkpoint", help="a step folder, checkpoints/ directory or export")
  p.add_argument("--tasks", default="all", help=f"'all' or a comma list of {', '.join(CHOICES)}")
  p.add_argument("--limit", type=int, help="score only the first N examples of each task")
  p.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                 help="directory of <task>/<task>.jsonl files (default: ./eval_data)")
  p.add_argument("--loss_batches", type=int, help="validation batches (default: eval_batches)")
  p.add_argument("--batch_size", type=int, help="rows per scoring batch (default: the "
                 "training microbatch, batch_size / microbatches)")
  p.add_argument("--seq_len", type=int, help="tokens per row (default: the run's seq_len)")
  p.add_argument("--mesh", default="1,-1,1", help="DATA,FSDP,TENSOR mesh sizes, -1 fills "
                 "(default: parameters and batches split over every device)")
  p.add_argument("--output_dir", help="where the JSON and markdown go (default: the "
                 "workdir, else the current directory)")
  p.add_argument("--no_progress", action="store_true", help="no progress bars")
  p.add_argument("--coordinator", help="host:port of process 0 (multi-process runs)")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  return p


def main(argv=None) -> dict:
  args = _parser().parse_args(argv)
  tasks, mesh_sizes = parse_tasks(args.tasks), parse_mesh(args.mesh)
  if args.limit is not None and args.limit < 1:
    raise ValueError(f"--limit must be positive; got {args.limit}")
  for name in tasks:  # bad data fails here, before any checkpoint is read
    if name != "loss":
      load_task(args.data_dir, name, limit=1)
  if args.coordinator or args.num_processes:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  model, config, mesh, folder = load_model(args.workdir or args.checkpoint, mesh_sizes)
  results = evaluate(model, config, mesh, tasks, data_dir=args.data_dir, limit=args.limit,
                     loss_batches=args.loss_batches, batch_size=args.batch_size,
                     seq_len=args.seq_len, progress=not args.no_progress)
  step = int(folder.name) if folder.name.isdigit() else None
  full = {"checkpoint": str(folder), "step": step, "variant": config.phd.variant,
          "limit": args.limit, "data_dir": args.data_dir, "results": results,
          "average": report.paper_average(results)}
  if jax.process_index() == 0:
    output_dir = args.output_dir or args.workdir or os.getcwd()
    paths = report.write(full, output_dir, "eval" if step is None else f"eval_step{step}")
    print(report.markdown(full), end="")
    print("written:", *paths)
  return full


if __name__ == "__main__":
  main()
