"""The embedded default corpus: the running interpreter's standard library sources.

Real text every machine has (~11 MB of `.py` files, tests excluded), prepared on first use
with the tfds builder of `prepare` (`text_files`) into
`<cache>/python_stdlib/<python version>/`, 5% of the files (by a hash of their path inside
the standard library) for validation. The cache is `config.data.data_dir` if set, else
`$PHD_JAX_CACHE`, else `~/.cache/phd_jax/tfds`. Concurrent first uses (several processes
on one machine) wait on a file lock instead of writing twice.
"""

from __future__ import annotations

import fcntl
import os
import platform
import sysconfig

NAME = "python_stdlib"
VALIDATION_PERCENT = 5.0
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def cache_dir(config) -> str:
  return (config.data.data_dir or os.environ.get("PHD_JAX_CACHE") or
          os.path.join(os.path.expanduser("~"), ".cache", "phd_jax", "tfds"))


def source_files(root: str | None = None) -> list:
  """`(path, path relative to the standard library)` of every non-test `.py` file, sorted."""
  root = root or sysconfig.get_paths()["stdlib"]
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
    for name in sorted(filenames):
      if name.endswith(".py") and not name.startswith("test_"):
        path = os.path.join(dirpath, name)
        files.append((path, os.path.relpath(path, root)))
  return files


def ensure_prepared(config, progress: bool = True) -> str:
  """Prepares the corpus once; returns the tfds data_dir holding it."""
  # imported here, as `sources` imports tensorflow_datasets: when a dataset is opened, not
  # when the module is
  from phd_jax.data import text_files  # pylint: disable=import-outside-toplevel
  data_dir = cache_dir(config)
  builder = text_files.make_builder(
      NAME, data_dir, {"train": source_files()}, validation_percent=VALIDATION_PERCENT,
      version=platform.python_version(),
      description="Python standard library sources of the interpreter of this version.")
  if os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json")):
    return data_dir
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{NAME}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be preparing it right now
    if not os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json")):
      print(f"preparing the {NAME} corpus into {builder.data_dir} (first use)", flush=True)
      text_files.prepare(builder, progress=progress)
  return data_dir
