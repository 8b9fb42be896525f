"""The paper's seven zero-shot tasks: reading the JSONL format, building the scoring
requests of each example, and accuracy with standard errors.

Format (one JSON object per line of `<data_dir>/<task>/<task>.jsonl`):
`{"id": str, "context": str, "choices": [str, ...], "label": int}`; option i is scored as
log P(choices[i] | context). WinoGrande records carry a shared `continuation` instead:
option i is log P(continuation | context + choices[i]) (partial scoring).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from phd_jax.eval.scorer import encode_pair


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  metric: str  # what the paper reports (OLMo conventions, PAPER.md): "acc" or "acc_norm"
  partial: bool = False  # WinoGrande: options complete the context, a shared continuation


# Names as in the data directory, in the order of the paper's table.
TASKS = {
    "mmlu": TaskSpec("acc_norm"),
    "hellaswag": TaskSpec("acc_norm"),
    "arc_challenge": TaskSpec("acc_norm"),
    "arc_easy": TaskSpec("acc"),
    "piqa": TaskSpec("acc_norm"),
    "winogrande": TaskSpec("acc", partial=True),
    "commonsense_qa": TaskSpec("acc_norm"),
}


@dataclasses.dataclass(frozen=True)
class Example:
  id: str
  context: str
  choices: tuple[str, ...]
  label: int
  continuation: str | None = None  # set for partial-scoring tasks (WinoGrande)

  def requests(self) -> list[tuple[str, str]]:
    """(context, continuation) text pairs whose log-likelihoods decide the example."""
    if self.continuation is not None:
      return [(self.context + c, self.continuation) for c in self.choices]
    return [(self.context, c) for c in self.choices]

  def scored_chars(self) -> list[int]:
    """Length in characters of each option's scored text: acc_norm divides by it."""
    return [len(cont) for _, cont in self.requests()]


def task_path(data_dir: str, name: str) -> str:
  return os.path.join(data_dir, name, f"{name}.jsonl")


def _check_record(record, where: str, partial: bool) -> Example:
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
  fields = {"id": str, "context": str, "choices": list, "label": int}
  if partial:
    fields["continuation"] = str
  for field, kind in fields.items():
    value = record.get(field)
    if not isinstance(value, kind) or isinstance(value, bool):
      raise ValueError(f"{where}: field {field!r} must be a {kind.__name__}; got {value!r}")
  choices = record["choices"]
  if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
    raise ValueError(f"{where}: field 'choices' must hold at least two non-empty strings")
  if not 0 <= record["label"] < len(choices):
    raise ValueError(f"{where}: label {record['label']} is not an index into "
                     f"{len(choices)} choices")
  if partial and not record["continuation"]:
    raise ValueError(f"{where}: field 'continuation' is empty")
  return Example(record["id"], record["context"], tuple(choices), record["label"],
                 record["continuation"] if partial else None)


def load_task(data_dir: str, name: str, limit: int | None = None) -> list[Example]:
  """The first `limit` (all if None) examples of a task. Every line of the file is checked
  (UTF-8, JSON, fields, label range) whatever `limit` is, so the startup checks that read
  one example still find a bad record on the last line before a model is loaded."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
  path = task_path(data_dir, name)
  if not os.path.isfile(path):
    raise ValueError(f"task {name!r}: no file {path}; pass --data_dir pointing at a "
                     "directory with <task>/<task>.jsonl files, e.g. one written by "
                     "`python -m phd_jax.eval.fetch --out=DIR` (see the README)")
  examples = []
  with open(path, "rb") as f:
    for line_number, data in enumerate(f, 1):
      where = f"{path}:{line_number}"
      try:
        line = data.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{where}: invalid UTF-8 at byte {e.start} of the line "
                         f"({data[e.start:e.start + 4]!r})") from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
      examples.append(_check_record(record, where, TASKS[name].partial))
  if not examples:
    raise ValueError(f"task {name!r}: {path} holds no examples")
  return examples[:limit]


def stderr_of_mean(values) -> float:
  """Standard error of a mean from the sample standard deviation (lm-eval's convention)."""
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return float("nan")
  return math.sqrt(values.var(ddof=1) / len(values))


def accuracy(examples: list[Example], loglikelihoods: list[list[float]]) -> dict:
  """acc (argmax of summed log-likelihood) and acc_norm (divided by the scored text's length
  in characters), each with its standard error; ties go to the lowest index."""
  correct, correct_norm = [], []
  for example, lls in zip(examples, loglikelihoods, strict=True):
    lls = np.asarray(lls, np.float64)
    correct.append(float(np.argmax(lls) == example.label))
    correct_norm.append(float(np.argmax(lls / np.asarray(example.scored_chars())) ==
                              example.label))
  return {"num_examples": len(examples),
          "acc": float(np.mean(correct)), "acc_stderr": stderr_of_mean(correct),
          "acc_norm": float(np.mean(correct_norm)),
          "acc_norm_stderr": stderr_of_mean(correct_norm)}


def evaluate_task(examples: list[Example], scorer, tokenizer, desc: str = "task") -> dict:
  """Score every option of every example in one batched pass; `accuracy` of the result."""
  requests, sizes = [], []
  for example in examples:
    pairs = example.requests()
    requests += [encode_pair(tokenizer, context, continuation) for context, continuation in pairs]
    sizes.append(len(pairs))
  scores = [score for score, _ in scorer.loglikelihood(requests, desc)]
  bounds = np.cumsum([0] + sizes)
  return accuracy(examples, [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
