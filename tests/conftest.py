"""Test set-up, before jax is imported: 8 fake CPU devices for the multi-device tests, and
implicit rank promotion as an error (`x[B, T] + y[T]` broadcasting by accident hides a
shape bug; write the broadcast out). Subprocesses inherit both through the environment."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           # tiny test programs: LLVM optimisation costs more than it saves
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"
