"""Checkpoint save and restore time with checksums off and on, and the speed of the
checksums the standard library offers.

  python bench/checkpoint.py                           # configs/olmo2_151m.py's train state
  python bench/checkpoint.py --config=olmo2_550m --dir=/mnt/disk/tmp --repeats=3

The train state of a config (parameters and AdamW moments, float32) is created on the
devices at hand, saved by `phd_jax.checkpoint.Checkpointer` into --dir (default: the
system's temporary directory; use the disk runs write to) and restored, with
`checkpoint.checksums` off and on, taking turns. Each row is the median of --repeats:
  save returns:  until save() returns: the training thread's share (arrays copied to host)
  committed:     until the step is on disk with its integrity record (written in the
                 background; the checksums are computed there, reading the files back)
  restore:       restore() of that step onto the same shardings, the check included
The last table times each checksum over the saved step's files in memory (GiB/s); the
first line gives the machine: its CPUs and load average, which other processes add to.
Files are read back from the page cache, as right after a save; a restore from a cold
disk reads every byte once more for the check.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
import statistics
import tempfile
import time
import zlib

import jax

from phd_jax import checkpoint, sharding, state

from common import load_config  # a sibling in bench/

CHUNK = 8 * 2**20


class _Crc32:
  """zlib.crc32 with hashlib's update() interface."""

  def __init__(self):
    self.value = 0

  def update(self, data):
    self.value = zlib.crc32(data, self.value)


CHECKSUMS = {
    "crc32 (zlib; what checkpoints record)": _Crc32,
    "sha256": hashlib.sha256,
    "sha1": hashlib.sha1,
    "blake2b": hashlib.blake2b,
    "md5": hashlib.md5,
}


def _save_and_restore(config, train_state, abstract, directory) -> tuple[float, float, float]:
  """Seconds until save() returns, until the step is committed, and of its restore."""
  with checkpoint.Checkpointer(directory, config) as ckpt:
    start = time.perf_counter()
    ckpt.save(1, train_state, {"position": 1}, force=True)
    returned = time.perf_counter() - start
    ckpt.wait_until_finished()
    committed = time.perf_counter() - start
  with checkpoint.Checkpointer(directory, config) as ckpt:
    start = time.perf_counter()
    jax.block_until_ready(ckpt.restore(abstract, step=1)[0])
    restored = time.perf_counter() - start
  return returned, committed, restored


def _throughput(files: list[pathlib.Path]) -> dict[str, float]:
  """GiB/s of each checksum over the files' bytes, in chunks as the checkpointer reads."""
  data = [f.read_bytes() for f in files]
  total = sum(len(d) for d in data)
  speeds = {}
  for name, make in CHECKSUMS.items():
    start = time.perf_counter()
    for blob in data:
      digest, view = make(), memoryview(blob)
      for i in range(0, len(blob), CHUNK):
        digest.update(view[i:i + CHUNK])
    speeds[name] = total / (time.perf_counter() - start) / 2**30
  return speeds


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="olmo2_151m", help="a file of configs/, by name")
  p.add_argument("--dir", default=tempfile.gettempdir(), help="where the steps are written")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)

  config = load_config(args.config)
  mesh = sharding.make_mesh(config)
  abstract = state.abstract_state(config, mesh)
  _, train_state = state.init_state(config, mesh)
  gib = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(train_state)) / 2**30
  print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
        f"{args.config} train state {gib:.2f} GiB on {len(jax.devices())} x "
        f"{jax.devices()[0].device_kind}")
  seconds = {False: [], True: []}
  root = pathlib.Path(tempfile.mkdtemp(prefix="bench_checkpoint_", dir=args.dir))
  try:
    for repeat in range(args.repeats):
      for checksums in (False, True):  # in turns: other load weighs on both alike
        config.checkpoint.checksums = checksums
        directory = root / f"{checksums}_{repeat}"
        seconds[checksums].append(_save_and_restore(config, train_state, abstract, directory))
        if repeat < args.repeats - 1 or not checksums:  # the last step: read below
          shutil.rmtree(directory)
    step = directory / "checkpoints" / "1"
    files = sorted(p for p in step.rglob("*") if p.is_file())
    speeds = _throughput(files)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print(f"load average {os.getloadavg()[0]:.1f} at the end; median of {args.repeats}\n")
  print("| checksums | save returns (s) | committed (s) | restore (s) |")
  print("|---|---|---|---|")
  for checksums, rows in seconds.items():
    medians = [statistics.median(column) for column in zip(*rows)]
    print(f"| {'on' if checksums else 'off'} | " + " | ".join(f"{m:.2f}" for m in medians) + " |")
  print(f"\n| checksum over the step's {len(files)} files | GiB/s |\n|---|---|")
  for name, speed in speeds.items():
    print(f"| {name} | {speed:.2f} |")


if __name__ == "__main__":
  main()
