"""Warns when this interpreter's JAX would not use the accelerator a launch expects.

  python launch/check_accelerator.py gpu|tpu

The launch scripts run it before starting the trainer: with the CPU-only jax that
`make install` sets up, a GPU or TPU job would otherwise train on CPU without a word.
Prints a warning and exits 0 either way (a warning, not a refusal). For TPUs it only looks
for libtpu: starting the TPU runtime in one process of a pod slice would wait for the
other hosts.
"""

import importlib.metadata
import importlib.util
import os
import sys


def seen_platform(expected: str) -> str:
  if expected == "tpu":
    return "tpu" if importlib.util.find_spec("libtpu") else "no libtpu (jax[tpu] missing)"
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # a probe, not a run
  try:
    import jax
    return f"{jax.default_backend()} ({jax.device_count()} devices)"
  except Exception as e:  # a broken install is worth the same warning
    return f"an error starting JAX: {type(e).__name__}: {e}"


def main(expected: str) -> None:
  seen = seen_platform(expected)
  if seen.split(" ")[0] != expected:
    try:
      version = "==" + importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
      version = ""
    extra = {"gpu": "cuda12", "tpu": "tpu"}[expected]
    print(f"WARNING: this launch expects {expected} devices, but the JAX of {sys.executable} "
          f"finds {seen}: the run would train on CPU. Install the accelerator build into "
          f"that environment: {sys.executable} -m pip install 'jax[{extra}]{version}'",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
