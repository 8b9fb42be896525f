"""Held-out loss, perplexity and bits per byte on a run's validation split.

The validation batches come from `data.make_iterator(config, "validation")`, packed as in
training; each real target (`loss.target_mask`) is one query of the scorer's forward, so
the loss equals training's `next_token_loss` without z-loss. Bits per byte divide the
summed loss (in bits) by the UTF-8 bytes the targets decode to (special tokens have none),
which makes models with different tokenizers comparable. Each batch runs in
`config.microbatches` slices, as the training step does, to bound memory.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import multihost_utils

from phd_jax import data, sharding
from phd_jax.loss import target_mask


def _target_bytes(tokenizer, tokens_BT, segment_ids_BT, has_target_BT) -> int:
  """UTF-8 bytes of the targets, decoded one document (segment of a row) at a time."""
  total = 0
  for tokens, segments, has_target in zip(tokens_BT, segment_ids_BT, has_target_BT):
    for segment in np.unique(segments[has_target]):
      targets = tokens[1:][(segments[:-1] == segment) & has_target[:-1]]
      total += len(tokenizer.decode(targets.tolist()).encode("utf-8"))
  return total


def _queries(batch) -> tuple[np.ndarray, np.ndarray]:
  """Query every position with a target for its next token."""
  tokens_BT = batch["tokens"]
  has_target_BT = np.asarray(target_mask(batch["segment_ids"]))
  positions = np.broadcast_to(np.arange(tokens_BT.shape[1], dtype=np.int32), tokens_BT.shape)
  query_pos = np.where(has_target_BT, positions, -1).astype(np.int32)
  query_tok = np.pad(tokens_BT[:, 1:], ((0, 0), (0, 1))).astype(np.int32)
  return query_pos, query_tok


def heldout_loss(scorer, config, num_batches: int) -> dict:
  """loss (nats per token), perplexity, bits_per_byte (None for the sources without text,
  `data.TOKEN_SOURCES`), and the counts they come from."""
  if num_batches < 1:
    raise ValueError(f"the held-out loss needs at least one batch; got {num_batches}")
  sharding.check_batch(config, scorer.mesh)
  microbatches = config.microbatches
  tokenizer = (None if config.data.source in data.TOKEN_SOURCES
               else data.make_tokenizer(config))
  iterator = data.make_iterator(config, split="validation")
  local = {"targets": 0, "bytes": 0}

  def batches():
    for _ in range(num_batches):
      batch = next(iterator)
      query_pos, query_tok = _queries(batch)
      has_target = query_pos >= 0
      local["targets"] += int(has_target.sum())
      if tokenizer is not None:
        local["bytes"] += _target_bytes(tokenizer, batch["tokens"], batch["segment_ids"],
                                        has_target)
      rows = (batch["tokens"], batch["segment_ids"], batch["positions"], query_pos, query_tok)
      for m in range(microbatches):  # no more rows at once than a training step holds
        yield tuple(np.ascontiguousarray(a[m::microbatches]) for a in rows)

  try:
    results = scorer.run(batches(), config.batch_size // microbatches,
                         num_batches * microbatches, "held-out loss")
    logprob_sum = sum(float(logprob.sum(dtype=np.float64)) for logprob, _ in results)
  finally:
    iterator.close()
  counts = np.array([local["targets"], local["bytes"]], np.int64)
  if jax.process_count() > 1:
    counts = multihost_utils.process_allgather(counts).sum(axis=0)
  targets, num_bytes = (int(c) for c in counts)
  loss = -logprob_sum / max(targets, 1)
  return {"loss": loss, "perplexity": math.exp(loss),
          "bits_per_byte": (-logprob_sum / math.log(2) / num_bytes
                            if tokenizer is not None and num_bytes else None),
          "targets": targets, "bytes": num_bytes if tokenizer is not None else None}
