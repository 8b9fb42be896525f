"""Answer accuracy of runs trained on the pointer-chasing task (`data/pointer_chase.py`).

  python -m phd_jax.eval.chase WORKDIR [WORKDIR ...] [--batches=N]

For each run: its newest checkpoint scored on N validation batches (default: the run's
eval_batches); accuracy = share of answers that are the model's argmax, loss = mean nats
per answer. Written to `chase.json` in the workdir (read by `phd_jax.compare`).
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


def _queries(batch, mask_T):
  """`[B, T]` query positions (-1 where the next token is no answer) and next tokens:
  the scorer takes queries in the batch's shape."""
  tokens_BT = batch["tokens"]
  positions_T = np.where(mask_T, np.arange(len(mask_T)), -1).astype(np.int32)
  query_pos = np.ascontiguousarray(np.broadcast_to(positions_T, tokens_BT.shape))
  query_tok = np.pad(tokens_BT[:, 1:], ((0, 0), (0, 1))).astype(np.int32)
  return query_pos, query_tok


def answer_metrics(model, config, mesh, num_batches: int) -> dict:
  """accuracy and loss on the answers of `num_batches` validation batches."""
  if config.data.source != "pointer_chase":
    raise ValueError(f"data.source={config.data.source!r}: answer accuracy needs a run "
                     "trained on 'pointer_chase'")
  mask_T = pointer_chase.layout(config).answer_mask(config.seq_len)
  scorer = Scorer(model, seq_len=config.seq_len, batch_size=config.batch_size, mesh=mesh)
  iterator = data.make_iterator(config, split="validation")

  def batches():
    for _ in range(num_batches):
      batch = next(iterator)
      yield (batch["tokens"], batch["segment_ids"], batch["positions"], *_queries(batch, mask_T))

  try:
    results = list(scorer.run(batches(), config.batch_size, num_batches, "answers"))
  finally:
    iterator.close()
  logprob = np.concatenate([r[0][:, mask_T].ravel() for r in results])
  greedy = np.concatenate([r[1][:, mask_T].ravel() for r in results])
  return {"accuracy": float(greedy.mean()), "answer_loss": float(-logprob.mean()),
          "answers": int(greedy.size)}


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
          f"{result['answer_loss']:.4f} over {result['answers']} answers", flush=True)


if __name__ == "__main__":
  main()
