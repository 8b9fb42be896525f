"""Planning fixed-shape scoring batches: truncation, shared prefixes and row packing.

A request is `(context_ids, continuation_ids)`; its score is the summed log-probability of
the continuation tokens given everything before them. Pure numpy, no devices.

- Windows: a request longer than `seq_len + 1` tokens keeps its last `seq_len + 1`
  (contexts lose their oldest tokens, as in lm-evaluation-harness); the model reads
  `full[:-1]` and predicts `full[1:]`. Continuations longer than `seq_len` are scored in
  pieces (`windows`).
- Shared prefixes: a request whose model input is a prefix of another's reads its
  log-probabilities from that one's forward (causal attention: the logits at a position
  depend only on the tokens up to it). Identical inputs, and in particular all options of a
  question with single-token answers, therefore cost one forward.
- Packing: the inputs that remain are packed, longest first, into rows of `seq_len` tokens
  as separate documents (`segment_ids` 1, 2, ...; `positions` restarting at 0), exactly as
  the training data is packed, so no attention crosses two requests.
- Queries: each row asks for at most `seq_len` (position, token) log-probabilities.
"""

from __future__ import annotations

import bisect
import dataclasses

import numpy as np


@dataclasses.dataclass
class Plan:
  """Rows to run and where each request's log-probabilities come back.

  tokens/segment_ids/positions: `[rows, seq_len]` int32 model inputs (segment 0 = empty).
  query_pos/query_tok: `[rows, seq_len]` int32: the log-probability of token `query_tok`
  after position `query_pos` is wanted (-1 = no query).
  request_queries: per request, the flat indices `row * seq_len + q` of its queries.
  """
  tokens: np.ndarray
  segment_ids: np.ndarray
  positions: np.ndarray
  query_pos: np.ndarray
  query_tok: np.ndarray
  request_queries: list[np.ndarray]

  @property
  def num_rows(self) -> int:
    return self.tokens.shape[0]


def windows(context, continuation, seq_len: int):
  """The forwards of one request: `(input, targets, scored)` with at most `seq_len` input
  tokens, the last `scored` targets being the request's. A request longer than
  `seq_len + 1` tokens loses its oldest context tokens; a continuation longer than
  `seq_len` is scored in consecutive pieces of `seq_len` tokens, each after the
  `seq_len` tokens before it (as lm-evaluation-harness's rolling windows)."""
  if len(continuation) < 1:
    raise ValueError("a request needs at least one continuation token")
  if len(context) < 1:
    raise ValueError("a request needs at least one context token (start with BOS)")
  full = list(context) + list(continuation)
  out = []
  for start in range(len(context), len(full), seq_len):
    piece = full[max(0, start - seq_len):start + seq_len]
    scored = min(seq_len, len(full) - start)
    out.append((piece[:-1][-seq_len:], piece[1:][-seq_len:], scored))
  return out


def _share_prefixes(inputs: list[tuple[int, ...]]) -> list[int]:
  """For each input, the index of the input whose forward serves it (itself if none longer
  has it as a prefix). Sorted lexicographically, a prefix comes right before the inputs that
  extend it, so one backward pass links each input to the end of its chain."""
  order = sorted(range(len(inputs)), key=inputs.__getitem__)
  server = list(range(len(inputs)))
  for a, b in zip(reversed(order[:-1]), reversed(order[1:])):
    shorter, longer = inputs[a], inputs[b]
    if longer[:len(shorter)] == shorter:
      server[a] = server[b]
  return server


class _Rows:
  """Best-fit packing of groups into rows with a token budget and a query budget."""

  def __init__(self, seq_len: int):
    self.seq_len = seq_len
    self.free_tokens: list[int] = []
    self.free_queries: list[int] = []
    self.open: list[tuple[int, int]] = []  # (free tokens, row), sorted

  def place(self, num_tokens: int, num_queries: int) -> tuple[int, int]:
    """Row and token offset for a group; opens a new row when none fits."""
    i = bisect.bisect_left(self.open, (num_tokens, -1))
    while i < len(self.open) and self.free_queries[self.open[i][1]] < num_queries:
      i += 1
    if i < len(self.open):
      row = self.open.pop(i)[1]
    else:
      row = len(self.free_tokens)
      self.free_tokens.append(self.seq_len)
      self.free_queries.append(self.seq_len)
    offset = self.seq_len - self.free_tokens[row]
    self.free_tokens[row] -= num_tokens
    self.free_queries[row] -= num_queries
    if self.free_tokens[row] > 0 and self.free_queries[row] > 0:
      bisect.insort(self.open, (self.free_tokens[row], row))
    return row, offset


def plan(requests, seq_len: int) -> Plan:
  """Pack `[(context_ids, continuation_ids), ...]` into rows of `seq_len` tokens."""
  truncated, owner = [], []
  for i, (context, continuation) in enumerate(requests):
    for window in windows(context, continuation, seq_len):
      truncated.append(window)
      owner.append(i)
  inputs = [tuple(t[0]) for t in truncated]
  server = _share_prefixes(inputs)
  # Queries of a request: (position in its server's input, token), deduplicated per group.
  groups: dict[int, dict[tuple[int, int], int]] = {}
  wanted: list[list[tuple[int, int]]] = []
  for i, (inp, targets, n) in enumerate(truncated):
    start = len(inp) - n
    pairs = [(start + j, targets[start + j]) for j in range(n)]
    group = groups.setdefault(server[i], {})
    for pair in pairs:
      group.setdefault(pair, len(group))
    wanted.append(pairs)

  rows = _Rows(seq_len)
  placed = {}  # server -> list of (row, offset, {pair: query slot}) chunks
  next_slot: dict[int, int] = {}
  # Longest inputs first: best-fit decreasing packs rows tightly.
  for s in sorted(groups, key=lambda s: -len(inputs[s])):
    pairs = list(groups[s])
    placed[s] = []
    for lo in range(0, len(pairs), seq_len):  # a group with more queries than a row re-runs
      chunk = pairs[lo:lo + seq_len]
      row, offset = rows.place(len(inputs[s]), len(chunk))
      slots = {}
      for pair in chunk:
        slots[pair] = next_slot.get(row, 0)
        next_slot[row] = slots[pair] + 1
      placed[s].append((row, offset, slots))

  num_rows = len(rows.free_tokens)
  shape = (num_rows, seq_len)
  tokens, segment_ids, positions = (np.zeros(shape, np.int32) for _ in range(3))
  query_pos, query_tok = np.full(shape, -1, np.int32), np.zeros(shape, np.int32)
  segments_in_row = np.zeros(num_rows, np.int32)
  for s, chunks in placed.items():
    inp = inputs[s]
    for row, offset, slots in chunks:
      segments_in_row[row] += 1
      span = slice(offset, offset + len(inp))
      tokens[row, span] = inp
      segment_ids[row, span] = segments_in_row[row]
      positions[row, span] = np.arange(len(inp))
      for (pos, tok), slot in slots.items():
        query_pos[row, slot] = offset + pos
        query_tok[row, slot] = tok

  request_queries = [[] for _ in requests]
  for i, pairs in enumerate(wanted):
    index = {}
    for row, _, slots in placed[server[i]]:
      index.update({pair: row * seq_len + slot for pair, slot in slots.items()})
    request_queries[owner[i]] += [index[p] for p in pairs]
  request_queries = [np.array(q, np.int64) for q in request_queries]
  return Plan(tokens, segment_ids, positions, query_pos, query_tok, request_queries)
