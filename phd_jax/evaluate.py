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

  python -m phd_jax.evaluate --workdir=RUN --follow --tasks=loss,hellaswag [--idle_timeout=S]

The evaluator job (`phd_jax.eval.follow`): beside a running or finished training run,
evaluates each of its checkpoints once, oldest first and then as each is committed, in
one process, and exits 0 once the run's final step is evaluated (or on SIGTERM, after the
step at hand; status 1 after --idle_timeout seconds without a new checkpoint). Results,
one line per step, go to `RUN/eval/results.jsonl` and TensorBoard events in `RUN/eval/`
(--output_dir: elsewhere); progress goes to stderr. Restarted, it evaluates the steps
that file lacks; a second evaluator on the same run exits 1 with one line.
"""

from __future__ import annotations

import argparse

import jax
from absl import logging
from etils import epath

from phd_jax import checkpoint, sharding
from phd_jax.eval import follow, report, suite
from phd_jax.eval.tasks import load_task
from phd_jax.workdir import RunRefused


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
  where.add_argument("--workdir", help="a training run: its newest complete checkpoint "
                     "(with --follow: all of them)")
  where.add_argument("--checkpoint", help="a step folder, checkpoints/ directory or export")
  p.add_argument("--follow", action="store_true", help="evaluate every checkpoint of the "
                 "--workdir run once, waiting for new ones until its final step")
  p.add_argument("--poll_seconds", type=float, help="--follow: seconds between looks for "
                 f"new checkpoints (default {follow.POLL_SECONDS:g})")
  p.add_argument("--idle_timeout", type=float, help="--follow: exit 1 after this many "
                 "seconds without a new checkpoint (default: wait as long as it takes)")
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
                 "run's workdir; beside an export); --follow: results.jsonl, TensorBoard "
                 "events and the lock (default: RUN/eval)")
  p.add_argument("--no_progress", action="store_true", help="no progress bars")
  p.add_argument("--coordinator", help="host:port of process 0 (multi-process runs)")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  return p


def _newest_readable_model(path, mesh_sizes):
  """`follow.load` of the newest checkpoint `path` names that reads back whole (only
  `path` itself when it is a step folder or export)."""
  one_folder = (epath.Path(path) / checkpoint.PARAMS).exists()

  def skip(folder, error):
    del folder  # named in the error
    if one_folder:
      raise error
    logging.warning("%s; trying the step before it.", error)

  found = checkpoint.newest_readable(checkpoint.complete_folders(path),
                                     lambda folder: follow.load(folder, mesh_sizes), skip)
  if found is None:
    raise ValueError(f"no checkpoint in {path} reads back whole")
  return found[1]


def _settings(args) -> follow.Settings:
  """The flags, checked before any checkpoint or accelerator is touched."""
  if args.limit is not None and args.limit < 1:
    raise ValueError(f"--limit must be positive; got {args.limit}")
  if not args.follow and (args.poll_seconds is not None or args.idle_timeout is not None):
    raise ValueError("--poll_seconds and --idle_timeout apply to --follow only")
  if args.follow:
    if not args.workdir:
      raise ValueError("--follow needs --workdir=RUN, the training run to follow")
    if args.coordinator or args.num_processes:
      raise ValueError("--follow runs as one process (one host, any number of its devices); "
                       "drop --coordinator and --num_processes")
    for name in ("poll_seconds", "idle_timeout"):
      if (value := getattr(args, name)) is not None and not value > 0:
        raise ValueError(f"--{name} must be a positive number of seconds; got {value}")
  settings = follow.Settings(
      tasks=tuple(parse_tasks(args.tasks)), data_dir=args.data_dir, limit=args.limit,
      loss_batches=args.loss_batches, batch_size=args.batch_size, seq_len=args.seq_len,
      mesh_sizes=sharding.parse_sizes(args.mesh), progress=not args.no_progress)
  for name in settings.tasks:  # bad data fails here, before any checkpoint is read
    if name != "loss":
      load_task(args.data_dir, name, limit=1)
  return settings


def run(args) -> dict:
  settings = _settings(args)
  if args.follow:
    return follow.follow(args.workdir, settings, idle_timeout=args.idle_timeout,
                         poll_seconds=args.poll_seconds or follow.POLL_SECONDS,
                         output_dir=args.output_dir)
  if args.coordinator or args.num_processes:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  loaded = _newest_readable_model(args.workdir or args.checkpoint, settings.mesh_sizes)
  full = follow.evaluate_loaded(loaded, settings)
  if jax.process_index() == 0:
    paths = report.write(full, *output_place(loaded.folder, args.output_dir))
    print(report.markdown(full), end="")
    print("written:", *paths)
  return full


def main(argv=None) -> dict:
  """Evaluate as the command line says; a bad flag, config or file exits with status 2
  and one line naming it, a second evaluator of a run or an idle timeout with status 1."""
  parser = _parser()
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  try:
    return run(args)
  except ValueError as e:
    parser.exit(2, f"{parser.prog}: error: {e}\n")
  except (RunRefused, follow.IdleTimeout) as e:  # not a usage error: as the trainer's refusal
    parser.exit(1, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
  main()
