"""Batched, sharded log-likelihood scoring of (context, continuation) requests.

`Scorer(model, seq_len=..., batch_size=..., mesh=...)` turns requests into fixed-shape
`[batch_size, seq_len]` batches (`batching.plan`: truncation, shared prefixes, packed rows),
runs them through one jitted forward on the mesh, and returns each request's summed
continuation log-probability and whether greedy decoding would have produced it.
One compilation per (model, batch shape): every batch has the same shape.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from phd_jax import sharding
from phd_jax.eval import batching


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """Token ids of a request, framed like a training document (`[BOS] + text`).

  The pair is encoded as one string and split after the context's tokens, with the
  context's trailing whitespace moved to the continuation (lm-evaluation-harness's rule), so
  that subword tokenizers see the text as they would in a document.
  """
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  whole = tokenizer.encode(context + continuation)
  context_ids = tokenizer.encode(context)
  return [tokenizer.bos_id] + context_ids, whole[len(context_ids):]


@functools.partial(jax.jit, static_argnums=0)
def _query_logprobs(graphdef, state, tokens_BT, segment_ids_BT, positions_BT, query_pos_BQ,
                    query_tok_BQ):
  """log P(query_tok | tokens up to query_pos) and whether it is the argmax, `[B, Q]`."""
  with nnx.logical_axis_rules(sharding.RULES):
    logits_BTV = nnx.merge(graphdef, state)(tokens_BT, segment_ids_BT, positions_BT)
  log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  best_BT = jnp.argmax(logits_BTV, axis=-1)
  pos_BQ = jnp.maximum(query_pos_BQ, 0)
  rows_B1 = jnp.arange(tokens_BT.shape[0])[:, None]
  logprob_BQ = (logits_BTV[rows_B1, pos_BQ, query_tok_BQ] -
                jnp.take_along_axis(log_z_BT, pos_BQ, axis=1))
  logprob_BQ = jnp.where(query_pos_BQ >= 0, logprob_BQ, 0.0)  # no query: adds nothing
  greedy_BQ = jnp.take_along_axis(best_BT, pos_BQ, axis=1) == query_tok_BQ
  # Replicated results: every process reads all of them back.
  replicated = PartitionSpec()
  return (jax.lax.with_sharding_constraint(logprob_BQ, replicated),
          jax.lax.with_sharding_constraint(greedy_BQ, replicated))


def single_device_mesh() -> Mesh:
  axis_types = (jax.sharding.AxisType.Auto,) * len(sharding.AXES)
  return jax.make_mesh((1, 1, 1), sharding.AXES, axis_types=axis_types,
                       devices=jax.devices()[:1])


class Scorer:
  """Log-likelihoods of requests under `model` (any nnx module called as
  `model(tokens_BT, segment_ids_BT, positions_BT) -> logits_BTV`).

  mesh: the ("data", "fsdp", "tensor") mesh the model's parameters live on (as in
  training); None puts them on one device. batch_size rows (rounded up to a multiple of the
  data-parallel devices) of seq_len tokens make one batch.
  """

  def __init__(self, model, *, seq_len: int, batch_size: int, mesh: Mesh | None = None,
               progress: bool = False):
    if seq_len < 2 or batch_size < 1:
      raise ValueError(f"seq_len must be >= 2 and batch_size >= 1; got {seq_len}, "
                       f"{batch_size}")
    self.graphdef, state = nnx.split(model)
    if mesh is None:
      mesh = single_device_mesh()
      state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    self.state, self.mesh, self.seq_len = state, mesh, seq_len
    dp = sharding.data_parallel_size(mesh)
    self.batch_size = math.ceil(batch_size / dp) * dp
    self.progress = progress

  def run(self, batches, global_rows: int, num_batches: int | None = None,
          desc: str = "scoring"):
    """Yield `(logprob, greedy)` numpy `[global_rows, Q]` for each batch of numpy rows
    `(tokens, segment_ids, positions, query_pos, query_tok)`: this process's rows of a
    `[global_rows, T]` batch (all of them, or its share as a data iterator yields them).
    One batch runs on the devices while the previous one is read back."""
    batch_sharding = sharding.batch_sharding(self.mesh)
    show = self.progress and jax.process_index() == 0
    pending = None
    with jax.set_mesh(self.mesh):
      for arrays in tqdm.tqdm(batches, desc=desc, total=num_batches, disable=not show,
                              leave=False):
        shape = (global_rows, arrays[0].shape[1])
        batch = [jax.make_array_from_process_local_data(batch_sharding, a, shape)
                 for a in arrays]
        result = _query_logprobs(self.graphdef, self.state, *batch)
        if pending is not None:
          yield tuple(np.asarray(r) for r in pending)
        pending = result
      if pending is not None:
        yield tuple(np.asarray(r) for r in pending)

  def loglikelihood(self, requests, desc: str = "scoring") -> list[tuple[float, bool]]:
    """`[(context_ids, continuation_ids), ...]` -> `[(sum of log P(continuation)), greedy)]`.

    Contexts longer than fits lose their oldest tokens; continuations longer than seq_len
    are scored in windows (`batching.windows`).
    """
    if not requests:
      return []
    plan = batching.plan(requests, self.seq_len)
    B, T = self.batch_size, self.seq_len
    num_batches = math.ceil(plan.num_rows / B)
    arrays = []
    for name, fill in (("tokens", 0), ("segment_ids", 0), ("positions", 0),
                       ("query_pos", -1), ("query_tok", 0)):
      array = getattr(plan, name)
      padding = np.full((num_batches * B - plan.num_rows, T), fill, np.int32)
      arrays.append(np.concatenate([array, padding]))
    batches = ([a[b * B:(b + 1) * B] for a in arrays] for b in range(num_batches))
    results = list(self.run(batches, B, num_batches, desc))
    logprob = np.concatenate([r[0] for r in results]).reshape(-1)
    greedy = np.concatenate([r[1] for r in results]).reshape(-1)
    return [(float(logprob[q].sum(dtype=np.float64)), bool(greedy[q].all()))
            for q in plan.request_queries]

  def loglikelihood_rolling(self, documents, desc: str = "rolling") -> list[float]:
    """Summed log-probability of every token after the first of each document (token ids
    starting with BOS), in windows of seq_len targets (`batching.windows`)."""
    scored = [i for i, doc in enumerate(documents) if len(doc) > 1]
    totals = [0.0] * len(documents)
    results = self.loglikelihood([(documents[i][:1], documents[i][1:]) for i in scored], desc)
    for i, (score, _) in zip(scored, results):
      totals[i] = score
    return totals
