"""Examples per second of the zero-shot scorer: packed rows with shared prefixes (what
`phd_jax.evaluate` runs) against one request per row, side by side on the same model.

  python bench/eval_scorer.py --data_dir=eval_data                 # tiny config, CPU
  python bench/eval_scorer.py --config=configs/olmo2_550m.py --variant=PHD-CSWA-2-16-32 \
      --data_dir=eval_data --limit=500 --batch_size=64            # on an accelerator

Random parameters unless --checkpoint is given (speed does not depend on them). Times
exclude compilation (one warm-up pass of each layout first).
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np

from phd_jax import config as config_lib
from phd_jax import data, state
from phd_jax.eval import batching, suite
from phd_jax.eval.scorer import Scorer, encode_pair
from phd_jax.eval.tasks import TASKS, load_task

from common import config_path  # a sibling in bench/


def one_per_row(requests, seq_len: int) -> batching.Plan:
  """The unpacked layout: every request (each window of a long one) alone in its own
  right-padded row."""
  rows = [(i, w) for i, (c, x) in enumerate(requests) for w in batching.windows(c, x, seq_len)]
  shape = (len(rows), seq_len)
  tokens, segment_ids, positions = (np.zeros(shape, np.int32) for _ in range(3))
  query_pos, query_tok = np.full(shape, -1, np.int32), np.zeros(shape, np.int32)
  request_queries = [[] for _ in requests]
  for row, (i, (inp, targets, scored)) in enumerate(rows):
    tokens[row, :len(inp)], segment_ids[row, :len(inp)] = inp, 1
    positions[row, :len(inp)] = np.arange(len(inp))
    query_pos[row, :scored] = np.arange(len(inp) - scored, len(inp))
    query_tok[row, :scored] = targets[len(inp) - scored:]
    request_queries[i] += (row * seq_len + np.arange(scored)).tolist()
  return batching.Plan(tokens, segment_ids, positions, query_pos, query_tok,
                      [np.array(q, np.int64) for q in request_queries])


def run_plan(scorer: Scorer, plan: batching.Plan) -> list[float]:
  B, T = scorer.batch_size, scorer.seq_len
  num_batches = math.ceil(plan.num_rows / B)
  pad = num_batches * B - plan.num_rows
  arrays = [np.concatenate([getattr(plan, name), np.full((pad, T), fill, np.int32)])
            for name, fill in (("tokens", 0), ("segment_ids", 0), ("positions", 0),
                               ("query_pos", -1), ("query_tok", 0))]
  batches = ([a[b * B:(b + 1) * B] for a in arrays] for b in range(num_batches))
  logprob = np.concatenate([r[0] for r in scorer.run(batches, B, num_batches)]).reshape(-1)
  return [float(logprob[q].sum()) for q in plan.request_queries]


def timed(fn):
  fn()  # compile
  start = time.perf_counter()
  result = fn()
  return time.perf_counter() - start, result


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=config_path("tiny"))
  p.add_argument("--variant", default="Vanilla")
  p.add_argument("--checkpoint", help="score with these parameters (and their config)")
  p.add_argument("--data_dir", default=suite.DEFAULT_DATA_DIR)
  p.add_argument("--tasks", default=",".join(TASKS))
  p.add_argument("--limit", type=int, default=64, help="examples per task")
  p.add_argument("--batch_size", type=int, help="rows per batch (default: the microbatch)")
  args = p.parse_args(argv)

  if args.checkpoint:
    model, config, mesh, _ = state.load_model(args.checkpoint)
    config_lib.validate(config, training=False)
  else:
    config = config_lib.load_config(args.config, args.variant)
    config_lib.validate(config, training=False)
    model, mesh = state.new_model(config, seed=0), None
  scorer = Scorer(model, seq_len=config.seq_len, mesh=mesh,
                  batch_size=args.batch_size or config.batch_size // config.microbatches)
  tokenizer = data.make_tokenizer(config)
  print(f"{config.phd.variant}, seq_len {config.seq_len}, {scorer.batch_size} rows per batch,"
        f" {jax.device_count()} {jax.devices()[0].device_kind} device(s)\n")
  print("| task | examples | requests | rows packed | rows one-per-row | packed ex/s | "
        "one-per-row ex/s | speed-up | max abs diff |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name in args.tasks.split(","):
    examples = load_task(args.data_dir, name, args.limit)
    requests = [encode_pair(tokenizer, c, x) for e in examples for c, x in e.requests()]
    packed_plan = batching.plan(requests, scorer.seq_len)
    unpacked_plan = one_per_row(requests, scorer.seq_len)
    packed_s, packed = timed(lambda: run_plan(scorer, packed_plan))
    unpacked_s, unpacked = timed(lambda: run_plan(scorer, unpacked_plan))
    diff = float(np.max(np.abs(np.subtract(packed, unpacked))))
    n = len(examples)
    print(f"| {name} | {n} | {len(requests)} | {packed_plan.num_rows} | "
          f"{unpacked_plan.num_rows} | {n / packed_s:.1f} | {n / unpacked_s:.1f} | "
          f"{unpacked_s / packed_s:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
  main()
