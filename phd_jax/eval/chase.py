"""Answer accuracy of runs trained on the pointer-chasing task (`data/pointer_chase.py`).

  python -m phd_jax.eval.chase WORKDIR [WORKDIR ...] [--batches=N]

For each run: its newest checkpoint scored on N validation batches (default: the run's
eval_batches); accuracy = share of answers that are the model's argmax, loss = mean nats
per answer. Two controls say where the accuracy comes from: `first_accuracy`, on each
row's first query, which only the table can answer; `swapped_accuracy`, with every row's
table replaced by the next row's (the answers then do not follow the table: what is left
comes from the queries and answers earlier in the row). Written to `chase.json` in the
workdir (read by `phd_jax.compare`).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from phd_jax import data
from phd_jax.data import pointer_chase
from phd_jax.eval.scorer import Scorer
from phd_jax.state import load_model

RESULT_FILE = "chase.json"


def _queries(tokens_BT, mask_T):
  """`[B, T]` query positions (-1 where the next token is no answer) and next tokens:
  the scorer takes queries in the batch's shape."""
  positions_T = np.where(mask_T, np.arange(len(mask_T)), -1).astype(np.int32)
  query_pos = np.ascontiguousarray(np.broadcast_to(positions_T, tokens_BT.shape))
  query_tok = np.pad(tokens_BT[:, 1:], ((0, 0), (0, 1))).astype(np.int32)
  return query_pos, query_tok


def answer_metrics(model, config, mesh, num_batches: int) -> dict:
  """Accuracy and loss on the answers of `num_batches` validation batches, and the two
  controls (module docstring); `swapped_accuracy` needs at least two rows per batch."""
  if config.data.source != "pointer_chase":
    raise ValueError(f"data.source={config.data.source!r}: answer accuracy needs a run "
                     "trained on 'pointer_chase'")
  fmt = pointer_chase.row_format(config)
  mask_T = fmt.answer_mask(config.seq_len)
  table = slice(1, 1 + fmt.table_tokens)
  scorer = Scorer(model, seq_len=config.seq_len, batch_size=config.batch_size, mesh=mesh)
  iterator = data.make_iterator(config, split="validation")
  try:
    raw = [next(iterator) for _ in range(num_batches)]
  finally:
    iterator.close()

  def score(swap_tables: bool):
    """(log-probabilities, argmax hits) `[rows, T]` of every batch's answers."""
    def batches():
      for batch in raw:
        tokens = batch["tokens"]
        if swap_tables:  # each row gets the next row's table; its answers stay its own
          tokens = tokens.copy()
          tokens[:, table] = np.roll(batch["tokens"][:, table], 1, axis=0)
        yield (tokens, batch["segment_ids"], batch["positions"], *_queries(tokens, mask_T))
    results = list(scorer.run(batches(), config.batch_size, num_batches, "answers"))
    return (np.concatenate([r[0] for r in results]).astype(np.float64),
            np.concatenate([r[1] for r in results]))

  logprob, greedy = score(swap_tables=False)
  metrics = {"accuracy": float(greedy[:, mask_T].mean()),
             "answer_loss": float(-logprob[:, mask_T].mean()),
             "answers": int(mask_T.sum() * len(greedy)),
             "first_accuracy": float(greedy[:, fmt.first_query].mean())}
  if config.batch_size >= 2:
    metrics["swapped_accuracy"] = float(score(swap_tables=True)[1][:, mask_T].mean())
  return metrics


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m phd_jax.eval.chase", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--batches", type=int, help="validation batches (default: eval_batches)")
  args = p.parse_args(argv)
  for workdir in args.workdirs:
    model, config, mesh, folder = load_model(workdir)
    result = {"step": int(folder.name) if folder.name.isdigit() else None,
              **answer_metrics(model, config, mesh, args.batches or config.eval_batches)}
    with open(os.path.join(workdir, RESULT_FILE), "w") as f:
      json.dump(result, f, indent=2)
    print(f"{workdir}: accuracy {result['accuracy']:.4f}, answer loss "
          f"{result['answer_loss']:.4f} over {result['answers']} answers; first query "
          f"{result['first_accuracy']:.4f}, tables swapped "
          f"{result.get('swapped_accuracy', float('nan')):.4f}", flush=True)


if __name__ == "__main__":
  main()
