"""Packed batches of tokenized documents: `PackedSource.next_batch(state)`.

This process owns rows (lanes) `[p * b, (p + 1) * b)` of every global batch of B rows
(b = B / processes); see `packing` for how a lane is filled. Rows depend only on
`(seed, B, lane)` and the lane's state, never on the number of processes, so a state saved
by N processes resumes exactly under M.

State (JSON): `{"step", "seed", "documents", "lanes": [[j, offset] or None] * B,
"counters"}`. A process's own state holds its lanes only; `export` gathers all lanes (and
sums the counters) across processes when running under `jax.distributed`, so any process's
exported state restores every process. Documents are read and tokenized in batches, in
`num_workers` spawned processes when > 0. With `train_tokens` > 0 only the split's first
documents are read (`restrict`); "documents" in the state counts those.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing

import numpy as np

from phd_jax.data import packing, restrict

_WORKER = {}  # per worker process: its Documents and tokenizer


def load_tokens(docs, tokenizer, doc_indices) -> list:
  """Framed token arrays `[BOS] + ids + [EOS]` of documents; empty ones stay empty."""
  texts = docs.texts(doc_indices)
  encoded = tokenizer.encode_batch(texts)
  framed = []
  for text, ids in zip(texts, encoded):
    if not text:
      framed.append(np.zeros(0, np.int32))
    else:
      framed.append(np.concatenate([[tokenizer.bos_id], ids, [tokenizer.eos_id]])
                    .astype(np.int32))
  return framed


def _init_worker(config, split):
  from phd_jax.data import sources, tokenizers
  _WORKER["docs"] = sources.open_documents(config, split)
  _WORKER["tokenizer"] = tokenizers.make_tokenizer(config)


def _worker_load(doc_indices):
  return load_tokens(_WORKER["docs"], _WORKER["tokenizer"], doc_indices)


class PackedSource:

  def __init__(self, docs, tokenizer, *, seq_len: int, global_batch: int, process_index: int,
               process_count: int, seed: int, num_workers: int = 0, worker_args=None,
               gather: bool = False, train_tokens: int = 0, split_label: str = "the split"):
    self.docs, self.tokenizer = docs, tokenizer
    self.seq_len, self.global_batch, self.seed = seq_len, global_batch, seed
    self.process_index, self.process_count = process_index, process_count
    rows = global_batch // process_count
    self.lanes = range(process_index * rows, (process_index + 1) * rows)
    self._cache: dict[int, np.ndarray] = {}  # stream index -> framed tokens (a pure memo)
    self._mean_len = float(seq_len)  # running tokens-per-document estimate for read-ahead
    self._num_workers, self._worker_args = num_workers, worker_args
    self._pool = None
    self._gather = gather
    self.restriction = None
    if train_tokens:
      try:
        self.restriction = restrict.first_documents(self._load, len(docs), train_tokens,
                                                     split_label)
      except ValueError:
        self.close()  # the workers it may have started
        raise
    self.num_documents = self.restriction.documents if self.restriction else len(docs)
    self.order = packing.DocumentOrder(self.num_documents, seed)

  def initial_state(self):
    lanes = [None] * self.global_batch
    for r in self.lanes:
      lanes[r] = [0, 0]
    return {"step": 0, "seed": self.seed, "documents": self.num_documents, "lanes": lanes,
            "counters": dict.fromkeys(packing.COUNTERS, 0)}

  def counters(self, state):
    return dict(state["counters"])

  def next_batch(self, state):
    fillers = {r: packing.RowFiller(self.seq_len, *state["lanes"][r], self.num_documents)
               for r in self.lanes}
    pending = list(self.lanes)
    while pending:
      self._read_ahead(fillers, pending)
      for r in pending:
        filler = fillers[r]
        while not filler.full:
          i = packing.stream_index(r, filler.j, self.global_batch)
          if i not in self._cache:
            break
          filler.feed(self._cache[i])
      pending = [r for r in pending if not fillers[r].full]
    self._forget_consumed(fillers)
    new_state = dict(state, step=state["step"] + 1, lanes=list(state["lanes"]),
                     counters=dict(state["counters"]))
    for r, filler in fillers.items():
      new_state["lanes"][r] = [filler.j, filler.offset]
      for k, v in filler.counters.items():
        new_state["counters"][k] += v
    order = [fillers[r] for r in self.lanes]
    batch = {"tokens": np.stack([f.tokens for f in order]),
             "segment_ids": np.stack([f.segment_ids for f in order]),
             "positions": np.stack([f.positions for f in order])}
    return batch, new_state

  def _read_ahead(self, fillers, pending):
    """Loads, in one batch, the documents each pending lane will probably need."""
    wanted = []
    for r in pending:
      f = fillers[r]
      count = 1 + int((self.seq_len - f.filled) / self._mean_len)
      for j in range(f.j, f.j + count):
        i = packing.stream_index(r, j, self.global_batch)
        if i not in self._cache:
          wanted.append(i)
    loaded = self._load([self.order(i) for i in wanted])
    lengths = [len(t) for t in loaded if len(t)]
    if lengths:
      self._mean_len = 0.9 * self._mean_len + 0.1 * float(np.mean(lengths))
    self._cache.update(zip(wanted, loaded))

  def _forget_consumed(self, fillers):
    keep_from = {r: f.j for r, f in fillers.items()}
    for i in list(self._cache):
      lane, j = i % self.global_batch, i // self.global_batch
      if j < keep_from.get(lane, 0):
        del self._cache[i]

  def _load(self, doc_indices):
    if not doc_indices:
      return []
    if self._num_workers <= 0:
      return load_tokens(self.docs, self.tokenizer, doc_indices)
    if self._pool is None:
      self._pool = concurrent.futures.ProcessPoolExecutor(
          self._num_workers, mp_context=multiprocessing.get_context("spawn"),
          initializer=_init_worker, initargs=self._worker_args)
    chunks = np.array_split(np.asarray(doc_indices), self._num_workers)
    results = self._pool.map(_worker_load, [c.tolist() for c in chunks if len(c)])
    return [tokens for chunk in results for tokens in chunk]

  def export(self, state):
    if not self._gather:
      return state
    from jax.experimental import multihost_utils
    own = np.array([state["lanes"][r] for r in self.lanes] +
                   [[state["counters"][k], 0] for k in packing.COUNTERS], np.int64)
    # int32 halves survive the gather whether or not jax runs with 64-bit integers
    gathered = multihost_utils.process_allgather(np.stack([own >> 31, own & (2**31 - 1)])
                                                 .astype(np.int32))
    parts = (np.asarray(gathered, np.int64)[:, 0] << 31) + np.asarray(gathered, np.int64)[:, 1]
    rows = len(self.lanes)
    state["lanes"] = parts[:, :rows].reshape(-1, 2).tolist()
    totals = parts[:, rows:, 0].sum(axis=0)
    state["counters"] = {k: int(v) for k, v in zip(packing.COUNTERS, totals)}
    return state

  def restore(self, state):
    expected = {"step", "seed", "documents", "lanes", "counters"}
    if not isinstance(state, dict) or set(state) != expected:
      raise ValueError(f"data state must have keys {sorted(expected)}; got {state!r:.200}")
    if len(state["lanes"]) != self.global_batch:
      raise ValueError(f"data state has {len(state['lanes'])} rows per batch, but "
                       f"batch_size={self.global_batch}: the order cannot be continued")
    for key, value in (("seed", self.seed), ("documents", self.num_documents)):
      if state[key] != value:
        raise ValueError(f"data state was saved with {key}={state[key]}, this run has {value}")
    missing = [r for r in self.lanes if state["lanes"][r] is None]
    if missing:
      raise ValueError(f"data state lacks rows {missing[:8]}... of process "
                       f"{self.process_index}; pass a state exported by all processes")
    complete = all(lane is not None for lane in state["lanes"])
    if complete and self.process_index != 0:  # the totals are counted once, on process 0
      state["counters"] = dict.fromkeys(packing.COUNTERS, 0)
    return state

  def close(self):
    if self._pool is not None:
      self._pool.shutdown(cancel_futures=True)
      self._pool = None


def merge_states(states) -> dict:
  """One state from the own-lane states of several processes (what `export` does with
  `jax.distributed`; for simulated processes and tools)."""
  merged = dict(states[0], lanes=list(states[0]["lanes"]),
                counters=dict.fromkeys(packing.COUNTERS, 0))
  for state in states:
    if state["step"] != merged["step"]:
      raise ValueError(f"states of different steps: {state['step']} != {merged['step']}")
    for r, lane in enumerate(state["lanes"]):
      if lane is not None:
        merged["lanes"][r] = lane
    for k in packing.COUNTERS:
      merged["counters"][k] += state["counters"][k]
  return merged
