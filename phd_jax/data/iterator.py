"""A checkpointable batch iterator over a pure `state -> (batch, next state)` function.

Every source (synthetic, packed documents) is written as such a function, so order and
resume are exact by construction: the iterator only remembers the state after the last
batch it handed out, and optionally computes the next `prefetch` batches on a thread.

A source provides `initial_state()`, `next_batch(state) -> (batch, state)`,
`restore(state) -> state` (checks a saved state and adapts it to this process),
`export(state) -> state` (what `get_state` returns; may gather all processes' parts) and
`counters(state) -> dict`; a source of documents may hold a `restriction`
(`restrict.Restriction`).
"""

from __future__ import annotations

import copy
import queue
import threading
from typing import Any

Batch = dict
State = dict


class BatchIterator:
  """`next(it)` -> batch; `get_state()` / `set_state()` round-trip through JSON.

  `source.next_batch` must be a pure function of the state: the batches after
  `set_state(s)` then equal those of an iterator that reached `s` itself.
  """

  def __init__(self, source, prefetch: int = 0):
    self._source = source
    self._next_batch = source.next_batch
    self._state = source.initial_state()
    self._prefetch = prefetch
    self._queue: queue.Queue | None = None
    self._stop: threading.Event | None = None
    self._thread: threading.Thread | None = None

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    if self._prefetch <= 0:
      batch, self._state = self._next_batch(self._state)
      return batch
    if self._thread is None:
      self._start()
    item = self._queue.get()
    if isinstance(item, BaseException):
      self._thread = None
      raise item
    batch, self._state = item
    return batch

  def get_state(self) -> State:
    """The state after the last batch returned (prefetched batches do not count).

    With several processes this may gather every process's part, so all processes call
    it together (as they do when saving a checkpoint).
    """
    return self._source.export(copy.deepcopy(self._state))

  def set_state(self, state: State) -> None:
    state = self._source.restore(copy.deepcopy(state))
    self._stop_prefetch()
    self._state = state

  @property
  def restriction(self):
    """The `restrict.Restriction` of a train split cut by `data.train_tokens`, else None."""
    return getattr(self._source, "restriction", None)

  def counters(self) -> dict:
    """This process's cumulative data counters up to the last batch returned."""
    return self._source.counters(self._state)

  def close(self) -> None:
    """Stop the prefetch thread and the source's worker processes."""
    self._stop_prefetch()
    getattr(self._source, "close", lambda: None)()

  def _stop_prefetch(self) -> None:
    """Stop the prefetch thread and drop what it computed ahead."""
    if self._thread is None:
      return
    self._stop.set()
    while self._thread.is_alive():  # unblock a producer waiting on a full queue
      try:
        self._queue.get(timeout=0.01)
      except queue.Empty:
        pass
    self._thread = None

  def __del__(self):
    self.close()

  def _start(self):
    self._queue = queue.Queue(maxsize=self._prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=_produce, daemon=True, args=(
        self._next_batch, copy.deepcopy(self._state), self._queue, self._stop))
    self._thread.start()


def _produce(next_batch, state: State, out: queue.Queue, stop: threading.Event):
  while not stop.is_set():
    try:
      item: Any = next_batch(state)
      state = item[1]
    except BaseException as e:  # handed to the consumer, which raises it
      item = e
    while not stop.is_set():
      try:
        out.put(item, timeout=0.05)
        break
      except queue.Full:
        pass
    if isinstance(item, BaseException):
      return
