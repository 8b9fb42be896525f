"""Evaluate a checkpoint: held-out loss and the paper's seven zero-shot tasks.

  python -m phd_jax.evaluate --workdir=workdirs/tiny --tasks=all --data_dir=eval_data
  python -m phd_jax.evaluate --checkpoint=RUN/checkpoints/600 --tasks=loss,hellaswag --limit=200

Restores only the parameters (the newest complete step of a workdir, a step folder or an
export) onto a mesh of the devices at hand, with the config saved in the checkpoint. A
workdir's step that does not read back as written (`checkpoint.integrity`) is skipped with
one line and the step before it tried, as training resumes; nothing is renamed.
`loss`: loss, perplexity and bits per byte on `loss_batches` batches of the run's validation
split. Each task: zero-shot multiple choice by the summed log-likelihood of each option,
acc and acc_norm (per character) with standard errors; the table's "reported" column is the
metric the paper reports (PAPER.md). Results go to stdout and to `eval_step<N>.json` and
`.md` in the run's workdir (also for --checkpoint=RUN/checkpoints/N; an export's go beside
it as `eval_<export>.*`), or to --output_dir. Task data: `<data_dir>/<task>/<task>.jsonl`
records `{"id", "context", "choices", "label"}` (README: where to get them). A bad flag,
config or file exits with status 2 and one line naming it. The scoring itself is
`phd_jax.eval.suite`, which training also runs in its loop.
"""

from __future__ import annotations

import argparse

import jax
from absl import logging
from etils import epath

from phd_jax import checkpoint, sharding
from phd_jax import config as config_lib
from phd_jax.eval import report, suite
from phd_jax.eval.tasks import load_task
from phd_jax.state import load_model


def parse_tasks(text: str) -> list[str]:
  """`all`, or comma-separated names out of `loss` and the task names."""
  names = (list(suite.CHOICES) if text.strip() == "all"
           else [t.strip() for t in text.split(",")])
  unknown = [n for n in names if n not in suite.CHOICES]
  if unknown or not names:
    raise ValueError(f"--tasks: unknown {unknown}; choose from all, {', '.join(suite.CHOICES)}")
  return names


def output_place(folder, output_dir: str | None) -> tuple[str, str]:
  """(directory, file stem) of the report: --output_dir, else the run's workdir for a step
  folder (`<workdir>/checkpoints/<step>`), else beside the export."""
  if folder.name.isdigit():
    stem = f"eval_step{folder.name}"
    default = folder.parent.parent if folder.parent.name == "checkpoints" else folder.parent
  else:
    stem, default = f"eval_{folder.name}", folder.parent
  return output_dir or str(default), stem


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m phd_jax.evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  where = p.add_mutually_exclusive_group(required=True)
  where.add_argument("--workdir", help="a training run: its newest complete checkpoint")
  where.add_argument("--checkpoint", help="a step folder, checkpoints/ directory or export")
  p.add_argument("--tasks", default="all",
                 help=f"'all' or a comma list of {', '.join(suite.CHOICES)}")
  p.add_argument("--limit", type=int, help="score only the first N examples of each task")
  p.add_argument("--data_dir", default=suite.DEFAULT_DATA_DIR,
                 help="directory of <task>/<task>.jsonl files (default: ./eval_data)")
  p.add_argument("--loss_batches", type=int, help="validation batches (default: eval_batches)")
  p.add_argument("--batch_size", type=int, help="rows per scoring batch (default: the "
                 "training microbatch, batch_size / microbatches)")
  p.add_argument("--seq_len", type=int, help="tokens per row (default: the run's seq_len)")
  p.add_argument("--mesh", default="1,-1,1", help="DATA,FSDP,TENSOR mesh sizes, -1 fills "
                 "(default: parameters and batches split over every device)")
  p.add_argument("--output_dir", help="where the JSON and markdown go (default: the "
                 "run's workdir; beside an export)")
  p.add_argument("--no_progress", action="store_true", help="no progress bars")
  p.add_argument("--coordinator", help="host:port of process 0 (multi-process runs)")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  return p


def _newest_readable_model(path, mesh_sizes):
  """`load_model` of the newest checkpoint `path` names that reads back whole (only `path`
  itself when it is a step folder or export)."""
  one_folder = (epath.Path(path) / checkpoint.PARAMS).exists()

  def read(folder):
    config = checkpoint.saved_config(folder)
    config_lib.validate(config, training=False)
    return load_model(folder, mesh_sizes, config=config)

  def skip(folder, error):
    del folder  # named in the error
    if one_folder:
      raise error
    logging.warning("%s; trying the step before it.", error)

  found = checkpoint.newest_readable(checkpoint.complete_folders(path), read, skip)
  if found is None:
    raise ValueError(f"no checkpoint in {path} reads back whole")
  return found[1]


def run(args) -> dict:
  tasks, mesh_sizes = parse_tasks(args.tasks), sharding.parse_sizes(args.mesh)
  if args.limit is not None and args.limit < 1:
    raise ValueError(f"--limit must be positive; got {args.limit}")
  for name in tasks:  # bad data fails here, before any checkpoint is read
    if name != "loss":
      load_task(args.data_dir, name, limit=1)
  if args.coordinator or args.num_processes:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  model, config, mesh, folder = _newest_readable_model(args.workdir or args.checkpoint,
                                                       mesh_sizes)
  results = suite.evaluate(model, config, mesh, tasks, data_dir=args.data_dir,
                           limit=args.limit, loss_batches=args.loss_batches,
                           batch_size=args.batch_size, seq_len=args.seq_len,
                           progress=not args.no_progress)
  step = int(folder.name) if folder.name.isdigit() else None
  full = {"checkpoint": str(folder), "step": step, "variant": config.phd.variant,
          "limit": args.limit, "data_dir": args.data_dir, "results": results,
          "average": report.paper_average(results)}
  if jax.process_index() == 0:
    paths = report.write(full, *output_place(folder, args.output_dir))
    print(report.markdown(full), end="")
    print("written:", *paths)
  return full


def main(argv=None) -> dict:
  """Evaluate as the command line says; a bad flag, config or file exits with status 2
  and one line naming it."""
  parser = _parser()
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  try:
    return run(args)
  except ValueError as e:
    parser.exit(2, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
  main()
