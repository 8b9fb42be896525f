"""Train every (variant, seed) of a comparison, one run after another, resumably.

  python -m phd_jax.sweep --config=configs/repro.py --workdir=DIR --seeds=0,1 \
      --variants=Vanilla,PHD-CSWA-2-4-8,PHD-CSWA-3-4-8,Vanilla@num_steps=1200 \
      [--config.field=value ...] [--dry_run]

A variant is a PHD name (Vanilla, PHD-K, PHD-SWA-K-W-∞, PHD-CSWA-K-W-C), optionally
followed by `@field=value` settings for that variant only: `Vanilla@num_steps=1200` is a
compute-matched baseline, `Vanilla@model.num_layers=4` a deeper one. `--config.*` settings
apply to every run (the variant's own settings win). Each run trains in
`DIR/<variant>/seed<N>` with `python -m phd_jax.main`, its output in `train.log` there
(a '/' in the variant, as in `Vanilla@data.data_dir=/mnt/x`, is written `%2F` in the
folder's name, so every run stays one folder below DIR).

A run whose `sweep_status.json` says "done" is skipped; any other (interrupted, failed)
is started again and resumes from its newest checkpoint. A failed run does not stop the
sweep: the others still train, and the sweep exits non-zero naming the failures.
`--dry_run` prints the per-run commands (e.g. for the `launch/` scripts) and trains nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time

from phd_jax import config as config_lib
from phd_jax.masks import parse_variant

STATUS_FILE = "sweep_status.json"
LOG_FILE = "train.log"
OVERRIDE_PREFIX = "--config."


@dataclasses.dataclass(frozen=True)
class Run:
  spec: str  # the variant as given, e.g. "Vanilla@num_steps=1200"
  variant: str  # the PHD name, e.g. "Vanilla"
  settings: tuple[str, ...]  # "field=value" for this variant only
  seed: int
  workdir: str
  num_steps: int  # where the run is complete; a preempted run also exits 0, earlier

  def command(self, config_path: str, common: tuple[str, ...], python: str) -> list[str]:
    return ([python, "-m", "phd_jax.main", f"--config={config_path}:{self.variant}",
             f"--workdir={self.workdir}", f"--config.seed={self.seed}", *common]
            + [OVERRIDE_PREFIX + s for s in self.settings])


def parse_spec(spec: str) -> tuple[str, tuple[str, ...]]:
  """"NAME@field=value@field=value" -> (NAME, ("field=value", ...)), names checked."""
  variant, *settings = spec.split("@")
  try:
    parse_variant(variant)
  except ValueError as e:
    raise ValueError(f"--variants: {spec!r}: {e}") from None
  for setting in settings:
    field, sep, value = setting.partition("=")
    if not sep or not field or not value:
      raise ValueError(f"--variants: {spec!r}: settings after '@' must look like "
                       f"'field=value'; got {setting!r}")
  return variant, tuple(settings)


def run_folder(spec: str) -> str:
  """The folder of a variant's runs, named by its spec: a '/' in a setting's value would
  make it a path (`x=../..` one outside the sweep), so '/' is written %2F, and '%' %25
  first, so that two specs never share a folder."""
  return spec.replace("%", "%25").replace("/", "%2F")


def _set(config, setting: str, where: str) -> None:
  """Apply "a.b=value" to a ConfigDict, the value read as the field's current type."""
  field, _, text = setting.partition("=")
  if message := config_lib.unknown_field_message(config, field):
    raise ValueError(f"{where}: {message}")
  *parents, leaf = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  current = node[leaf]
  try:
    if isinstance(current, bool):
      if text.lower() not in ("true", "false"):
        raise ValueError
      value = text.lower() == "true"
    else:
      value = type(current)(text) if current is not None else text
  except ValueError:
    raise ValueError(f"{where}: {field}={text!r} is not a {type(current).__name__}") from None
  with config.unlocked():
    node[leaf] = value


def plan(config_path: str, variants: str, seeds: str, workdir: str,
         common: tuple[str, ...] = ()) -> list[Run]:
  """Every (variant, seed) run: the variants in the order given, each over all seeds.

  Every run's config is built and validated here, so a bad name, field or value fails
  before anything trains.
  """
  if not os.path.isfile(config_path):
    raise ValueError(f"--config: no such file {config_path!r}")
  specs = [s.strip() for s in variants.split(",") if s.strip()]
  if not specs:
    raise ValueError("--variants: give at least one variant")
  if len(set(specs)) != len(specs):
    raise ValueError(f"--variants: {variants!r} names a variant twice")
  try:
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
  except ValueError:
    raise ValueError(f"--seeds must be comma-separated integers; got {seeds!r}") from None
  if not seed_list or len(set(seed_list)) != len(seed_list):
    raise ValueError(f"--seeds must name distinct seeds; got {seeds!r}")
  runs = []
  for spec in specs:
    variant, settings = parse_spec(spec)
    config = config_lib.load_config(config_path, variant)
    for setting in common:
      _set(config, setting, OVERRIDE_PREFIX + setting.partition("=")[0])
    for setting in settings:
      _set(config, setting, f"--variants: {spec!r}")
    try:
      config_lib.validate(config)
    except ValueError as e:
      raise ValueError(f"--variants: {spec!r}: {e}") from None
    folder = os.path.join(workdir, run_folder(spec))
    runs += [Run(spec, variant, settings, seed, os.path.join(folder, f"seed{seed}"),
                 config.num_steps) for seed in seed_list]
  return runs


def read_status(run_workdir: str) -> dict | None:
  """The run's sweep_status.json; None when there is none, or (with one warning line) when
  it is not a JSON object, e.g. empty or cut short by a crash: the run is not done then,
  and training it again resumes from its checkpoints."""
  path = os.path.join(run_workdir, STATUS_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      status = json.load(f)
    problem = None if isinstance(status, dict) else f"a JSON {type(status).__name__}"
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    problem = f"not JSON ({e})"
  if problem:
    print(f"warning: {path} is damaged: {problem}; the run is resumed", file=sys.stderr,
          flush=True)
    return None
  return status


def _write_status(run_workdir: str, status: dict) -> None:
  path = os.path.join(run_workdir, STATUS_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(status, f, indent=2)
    f.flush()
    os.fsync(f.fileno())  # a rename that reaches the disk before the data leaves it empty
  os.replace(path + ".tmp", path)  # never a half-written status


def saved_step(run_workdir: str) -> int | None:
  """The newest checkpoint step in the run's workdir (set-aside `<step>.corrupt` excluded)."""
  folder = os.path.join(run_workdir, "checkpoints")
  steps = [int(name) for name in (os.listdir(folder) if os.path.isdir(folder) else ())
           if name.isdigit()]
  return max(steps, default=None)


def execute(run: Run, command: list[str], previous: dict | None) -> dict:
  """Train one run (resuming it), its output appended to its train.log; returns its
  status, also written to its sweep_status.json, which counts on from `previous` (the
  status read before, if any)."""
  os.makedirs(run.workdir, exist_ok=True)
  previous = previous or {}
  start = time.time()
  with open(os.path.join(run.workdir, LOG_FILE), "a") as log:
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    rc = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
  if rc:
    outcome = "failed"
  else:  # exit 0 also ends a preempted run (SIGTERM): done only once it saved its last step
    outcome = "done" if (saved_step(run.workdir) or 0) >= run.num_steps else "interrupted"
  status = {"status": outcome, "returncode": rc,
            "variant": run.spec, "seed": run.seed, "command": shlex.join(command),
            "wall_s": previous.get("wall_s", 0.0) + time.time() - start,
            "attempts": previous.get("attempts", 0) + 1}
  _write_status(run.workdir, status)
  return status


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m phd_jax.sweep", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="config file (no ':variant')")
  p.add_argument("--variants", required=True, help="comma list of NAME[@field=value...]")
  p.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
  p.add_argument("--workdir", required=True, help="runs go to WORKDIR/<variant>/seed<N>")
  p.add_argument("--dry_run", action="store_true", help="print the commands, train nothing")
  return p


def main(argv=None) -> int:
  parser = _parser()
  args, rest = parser.parse_known_args(argv)
  unknown = [a for a in rest if not (a.startswith(OVERRIDE_PREFIX) and "=" in a)]
  if unknown:
    parser.error(f"unrecognised arguments {unknown}; settings look like --config.field=value")
  if ":" in os.path.basename(args.config):
    parser.error("--config takes the file only; variants go in --variants")
  common = tuple(a[len(OVERRIDE_PREFIX):] for a in rest)
  try:
    runs = plan(args.config, args.variants, args.seeds, args.workdir, common)
  except ValueError as e:
    parser.error(str(e))
  if args.dry_run:
    for run in runs:
      print(shlex.join(run.command(args.config, rest, "python")))
    return 0
  failed = []
  for i, run in enumerate(runs, 1):
    name = f"[{i}/{len(runs)}] {run.spec} seed {run.seed}"
    previous = read_status(run.workdir)
    if (previous or {}).get("status") == "done":
      print(f"{name}: done already, skipped", flush=True)
      continue
    print(f"{name}: training in {run.workdir}", flush=True)
    status = execute(run, run.command(args.config, rest, sys.executable), previous)
    print(f"{name}: {status['status']} (exit {status['returncode']}, "
          f"{status['wall_s']:.0f} s)", flush=True)
    if status["status"] != "done":
      failed.append(f"{run.spec} seed {run.seed} (see {run.workdir}/{LOG_FILE})")
  if failed:
    print("not finished (rerun the same command to resume): " + "; ".join(failed),
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
