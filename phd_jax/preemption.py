"""Preemption: the training loop asks at each step boundary whether to save and stop.

  guard = PreemptionGuard()         # after jax.distributed.initialize
  ...                               # after each step, on every process:
  if guard.reached(step):           # then ckpt.save(step, ..., force=True) and exit 0
"""

from __future__ import annotations

import signal
import threading

import jax
import orbax.checkpoint as ocp
from absl import logging


class PreemptionGuard:
  """Tells the loop, at each step boundary, that it should save and exit.

  With `jax.distributed` initialised (several processes), JAX's preemption service
  catches SIGTERM (and TPU maintenance notices) and `reached(step)` turns True on every
  process at the same step. A single process catches SIGTERM itself. Create it after
  `jax.distributed.initialize` and call `reached(step)` every step on every process.
  """

  def __init__(self):
    self._synced = (jax.distributed.is_initialized()
                    and jax.config.jax_enable_preemption_service)
    self._signalled = False
    self._previous = None
    if self._synced:
      return
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Not on the main thread: SIGTERM is not caught, no preemption saves.")
      return
    self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._signalled = True  # only a flag: a signal handler must not take locks

  def reached(self, step: int) -> bool:
    if self._synced:
      return ocp.multihost.reached_preemption(int(step))
    return self._signalled

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
