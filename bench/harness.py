"""A time budget for a run of measured rows: skip what would not fit, record what fails, and
write the report when the time is spent, whatever is running.

The run has a deadline and each part of it a share of the time left. A row's cost is
estimated from the rows of its kind before it (scaled, e.g. by K), or from a prior for the
first of a kind; a row that would not fit is skipped and listed. A row that raises is
listed with its error and the run goes on (on a device a row may fail for the device's
reasons: memory, an unsupported shape), but an error of the kinds in `BUG_ERRORS` is a
bug in the bench or the package, and is marked as one. A watchdog thread writes the
report and ends the process when the deadline passes (a compile cannot be interrupted).
"""

from __future__ import annotations

import os
import threading
import time
import traceback

import jax

# Errors that no device explains: an import the image cannot satisfy, a name or an argument
# that does not exist (a changed JAX API among them).
BUG_ERRORS = (ImportError, NameError, TypeError, AttributeError, KeyError, SyntaxError)
CUT_OFF_STATUS = 3  # the exit status when the watchdog ends the run


class Budget:
  """The run's deadline, the current part's deadline, and the cost of past rows by kind."""

  def __init__(self, seconds: float, start: float, priors: dict[str, float]):
    """`start`: time.perf_counter() when the run began; `priors`: seconds a row of each
    kind (the first word of its kind) is guessed to take before one has run."""
    self.deadline = start + seconds
    self.part_deadline = self.deadline
    self.priors = priors
    self.reserve = min(3.0, 0.05 * seconds)  # kept for writing the report
    self.costs = {}

  def left(self) -> float:
    return min(self.part_deadline, self.deadline - self.reserve) - time.perf_counter()

  def start_part(self, share: float):
    """The part that begins now may use `share` of the time left."""
    self.part_deadline = time.perf_counter() + share * max(
        self.deadline - self.reserve - time.perf_counter(), 0)

  def estimate(self, kind: str, scale: float = 1.0) -> float:
    if kind in self.costs:
      return self.costs[kind] * scale
    return self.priors[kind.split()[0]]

  def record(self, kind: str, seconds: float, scale: float = 1.0):
    self.costs[kind] = seconds / scale

  def timed(self, fn, warmup: int, calls: int) -> list[float]:
    """Seconds of up to `calls` calls of `fn` after `warmup` untimed ones; when the part's
    time runs out, the warm-up is cut short and the timing stops (after one timed call)."""
    seconds, done = [], 0
    while len(seconds) < calls:
      begin = time.perf_counter()
      jax.block_until_ready(fn())
      took = time.perf_counter() - begin
      if done >= warmup:
        seconds.append(took)
      done += 1
      if self.left() < 2 * took:
        if seconds:
          break
        done = max(done, warmup)
    return seconds


class RowRunner:
  """Runs rows within the budget and lists in the report those skipped and those failed."""

  def __init__(self, budget: Budget, report, start: float):
    """`report`: has add(section, row) and finish(status), as device_report.Report."""
    self.budget, self.report, self.start = budget, report, start
    self.current = None  # "part: row" while a row runs, for the watchdog

  def row(self, part: str, name: str, kind: str, fn, scale: float = 1.0):
    """fn() if its estimated cost fits in the part's time left, else None (and so when it
    raises: its error is listed, with `bug` true for the `BUG_ERRORS`)."""
    estimate = self.budget.estimate(kind, scale)
    if estimate > self.budget.left():
      self.report.add("skipped", {"part": part, "row": name, "why": (
          f"needs ~{estimate:.0f} s, {max(self.budget.left(), 0):.0f} s left in this part")})
      return None
    self.current = f"{part}: {name}"
    begin = time.perf_counter()
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except  # listed in the report, run goes on
      traceback.print_exc()
      self.report.add("errors", {"part": part, "row": name, "bug": isinstance(e, BUG_ERRORS),
                                 "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                                          if str(e) else type(e).__name__})
      result = None
    self.budget.record(kind, time.perf_counter() - begin, scale)
    self.current = None
    print(f"[{time.perf_counter() - self.start:6.1f} s] {part}: {name}", flush=True)
    return result

  def start_watchdog(self) -> threading.Timer:
    """Writes the report and ends the process when the budget's deadline passes."""
    def fire():
      self.report.add("skipped", {"part": "all", "row": self.current or "-",
                                  "why": "cut off: the budget ran out while it ran"})
      self.report.finish("cut off at the budget")
      os._exit(CUT_OFF_STATUS)  # pylint: disable=protected-access  # not interruptible
    timer = threading.Timer(max(self.budget.deadline - time.perf_counter() - 0.5, 0), fire)
    timer.daemon = True
    timer.start()
    return timer
