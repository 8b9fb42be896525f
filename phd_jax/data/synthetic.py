"""A learnable synthetic token source for tests and benchmarks: no files, no tokenizer.

Documents are walks of one fixed random Markov chain over the ids `[FIRST_ID, vocab_size)`
(each id has a few likely successors, so a small model's loss falls quickly towards the
chain's entropy, ~1.1 nats), each starting with BOS. Documents of random lengths are
packed into rows with segment ids and in-document positions.

Row `g` of the global batch at step `s` is a pure function of `(seed, split, s, g)`, so the
order is exact under resume and independent of how many processes read shares of it.
"""

from __future__ import annotations

import numpy as np

from phd_jax.data.tokenizers import BOS_ID, FIRST_ID

SUCCESSOR_PROBS = np.array([0.55, 0.25, 0.15, 0.05])
CHAIN_SEED = 1234  # the "language" is the same for every run seed; only the samples differ
SPLITS = {"train": 0, "validation": 1, "test": 2}
MIN_PIECE = 2  # a row's tail shorter than this stays padding (it would have no target)


def markov_chain(vocab_size: int) -> np.ndarray:
  """`successors[v, j]`: the j-th likely successor of token v (ids >= FIRST_ID)."""
  rng = np.random.default_rng([CHAIN_SEED, vocab_size])
  return rng.integers(FIRST_ID, vocab_size, size=(vocab_size, len(SUCCESSOR_PROBS)),
                      dtype=np.int32)


def entropy() -> float:
  """Per-token entropy (nats) of the chain's transitions: the loss floor."""
  return float(-(SUCCESSOR_PROBS * np.log(SUCCESSOR_PROBS)).sum())


class SyntheticSource:
  """`next_batch(state) -> (batch, state)` for this process's rows; state is `{"step": s}`."""

  def __init__(self, *, vocab_size: int, seq_len: int, global_batch: int, process_index: int,
               process_count: int, seed: int, split: str, mean_doc_len: int | None = None):
    if vocab_size <= FIRST_ID + 1:
      raise ValueError(f"synthetic data needs model.vocab_size > {FIRST_ID + 1}; "
                       f"got {vocab_size}")
    if split not in SPLITS:
      raise ValueError(f"synthetic split {split!r} is not one of {sorted(SPLITS)}")
    self.seq_len = seq_len
    self.rows = global_batch // process_count
    self.first_row = process_index * self.rows
    self.seed, self.split_id = seed, SPLITS[split]
    self.mean_doc_len = mean_doc_len or max(seq_len // 4, 2)
    self.successors = markov_chain(vocab_size)
    self.cum_probs = np.cumsum(SUCCESSOR_PROBS)[:-1]
    self.vocab_size = vocab_size

  def initial_state(self):
    return {"step": 0}

  def restore(self, state):
    if set(state) != {"step"} or not isinstance(state["step"], int) or state["step"] < 0:
      raise ValueError(f"synthetic data state must be {{'step': int >= 0}}; got {state!r}")
    return state

  def export(self, state):
    return state

  def counters(self, state):
    return {}

  def next_batch(self, state):
    step = state["step"]
    T = self.seq_len
    segment_ids = np.zeros((self.rows, T), np.int32)
    positions = np.zeros((self.rows, T), np.int32)
    uniforms = np.empty((self.rows, T))
    starts = np.empty((self.rows, T), np.int32)
    for i in range(self.rows):
      rng = np.random.default_rng([self.seed, self.split_id, step, self.first_row + i])
      segment_ids[i], positions[i] = self._layout(rng)
      uniforms[i] = rng.random(T)
      starts[i] = rng.integers(FIRST_ID, self.vocab_size, size=T)
    choice = np.searchsorted(self.cum_probs, uniforms).astype(np.int32)
    tokens = np.zeros((self.rows, T), np.int32)
    current = np.full(self.rows, FIRST_ID, np.int32)
    for t in range(T):  # the walk is sequential in t, vectorised over rows
      current = np.where(positions[:, t] == 1, starts[:, t],
                         self.successors[current, choice[:, t]])
      tokens[:, t] = np.where(positions[:, t] == 0, BOS_ID, current)
    tokens[segment_ids == 0] = 0
    batch = {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}
    return batch, {"step": step + 1}

  def _layout(self, rng):
    """Segment ids and positions of one row: random document lengths, tail maybe padded."""
    T = self.seq_len
    segment_ids = np.zeros(T, np.int32)
    positions = np.zeros(T, np.int32)
    start, segment = 0, 1
    while T - start >= MIN_PIECE:
      length = min(int(rng.geometric(1.0 / self.mean_doc_len)) + 1, T - start)
      segment_ids[start:start + length] = segment
      positions[start:start + length] = np.arange(length)
      start, segment = start + length, segment + 1
    return segment_ids, positions
