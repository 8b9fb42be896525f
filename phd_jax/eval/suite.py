"""The evaluation suite of a model in memory: held-out loss and the paper's zero-shot tasks.

`evaluate` returns the full results (the `phd_jax.evaluate` command line writes them as a
report); `in_loop` returns the same numbers as flat metrics for the training loop.
Task data: `<data_dir>/<task>/<task>.jsonl` records `{"id", "context", "choices",
"label"}` (README: Evaluation).
"""

from __future__ import annotations

from phd_jax import data
from phd_jax.eval import heldout, report
from phd_jax.eval.scorer import Scorer
from phd_jax.eval.tasks import TASKS, evaluate_task, load_task

DEFAULT_DATA_DIR = "eval_data"
CHOICES = ("loss",) + tuple(TASKS)


def evaluate(model, config, mesh, tasks, *, data_dir: str = DEFAULT_DATA_DIR,
             limit: int | None = None, loss_batches: int | None = None,
             batch_size: int | None = None, seq_len: int | None = None,
             progress: bool = False) -> dict:
  """Results per name in `tasks` ("loss" and task names), scored on `mesh`.

  Defaults: the config's eval_batches, training microbatch (batch_size / microbatches rows)
  and seq_len.
  """
  examples = {name: load_task(data_dir, name, limit) for name in tasks if name != "loss"}
  scorer = Scorer(model, seq_len=seq_len or config.seq_len, mesh=mesh, progress=progress,
                  batch_size=batch_size or config.batch_size // config.microbatches)
  results = {}
  if "loss" in tasks:
    results["loss"] = heldout.heldout_loss(scorer, config, loss_batches or config.eval_batches)
  if examples:
    tokenizer = data.make_tokenizer(config)
    data.check_vocab(tokenizer, config)
  for name, task_examples in examples.items():
    results[name] = {**evaluate_task(task_examples, scorer, tokenizer, desc=name),
                     "metric": TASKS[name].metric}
  return results


def in_loop(model, config, mesh=None, *, tasks=("loss",), limit: int | None = None,
            data_dir: str = DEFAULT_DATA_DIR, loss_batches: int | None = None) -> dict:
  """Metrics to log during training: `eval/loss`, `eval/perplexity`, `eval/bits_per_byte`
  (when "loss" is in `tasks`), `eval/<task>` (the paper's metric of each task, on its first
  `limit` examples) and `eval/average`.

  mesh: the one the model's parameters live on (None: one device). Compiles once: later
  calls with the same shapes reuse the forward.
  """
  return scalars(evaluate(model, config, mesh, tasks, data_dir=data_dir, limit=limit,
                          loss_batches=loss_batches))


def scalars(results: dict) -> dict:
  """`evaluate`'s results as the scalars training and the evaluator job log, under the
  same tags (`eval/loss`, `eval/<task>`, `eval/average`)."""
  metrics = {}
  if "loss" in results:
    for key in ("loss", "perplexity", "bits_per_byte"):
      if results["loss"][key] is not None:
        metrics[f"eval/{key}"] = results["loss"][key]
  for name in TASKS:
    if name in results:
      metrics[f"eval/{name}"] = results[name][results[name]["metric"]]
  if (average := report.paper_average(results)) is not None:
    metrics["eval/average"] = average
  return metrics
