"""Task files, acc/acc_norm on a hand-made task scored by a model with chosen logits."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eval_helpers import eval_data_dir, write_task
from phd_jax.data.tokenizers import ByteTokenizer
from phd_jax.eval.scorer import Scorer
from phd_jax.eval.tasks import TASKS, evaluate_task, load_task

TOK = ByteTokenizer()


class Bigram(nnx.Module):
  """Next-token logits that depend only on the previous token: `table[token]`."""

  def __init__(self, table):
    self.table = nnx.Param(jnp.asarray(table, jnp.float32))

  def __call__(self, tokens_BT, segment_ids_BT=None, positions_BT=None):
    return self.table[...][tokens_BT]


def chosen_bigram():
  """Log-probabilities in bits: ' ' -2, 'a' -1, 'b' -3 (the rest share 1/8); after 'b',
  ' ' is likelier (-1) and 'a' less likely (-2)."""
  def row(p_space, p_a):
    probs = np.full(TOK.vocab_size, (1 / 8) / (TOK.vocab_size - 3))
    for char, p in ((" ", p_space), ("a", p_a), ("b", 1 / 8)):
      probs[TOK.encode(char)[0]] = p
    return np.log(probs)
  table = np.tile(row(1 / 4, 1 / 2), (TOK.vocab_size, 1))
  table[TOK.encode("b")[0]] = row(1 / 2, 1 / 4)
  return Bigram(table)


# (choices, label); with the bits above, e.g. " b" = -5
# bits (-2.5 per char) vs " aaaaaa" = -8 bits (-1.14 per char).
HAND_MADE = [([" a", " bb"], 0), ([" b", " aaaaaa"], 1), ([" aaaaaa", " b"], 1),
             ([" b", " aaaaaa"], 0)]


def test_acc_and_acc_norm_on_a_hand_made_task(tmp_path):
  write_task(tmp_path, "piqa", [{"id": str(i), "context": "Q:", "choices": c, "label": l}
                                for i, (c, l) in enumerate(HAND_MADE)])
  # WinoGrande-style: after "b" the shared continuation " aa" costs -3 bits, after "a" -4.
  write_task(tmp_path, "winogrande", [{"id": "w", "context": "x ", "choices": ["a", "b"],
                                       "continuation": " aa", "label": 1}])
  scorer = Scorer(chosen_bigram(), seq_len=32, batch_size=2)
  examples = load_task(str(tmp_path), "piqa")
  bits = [score / math.log(2) for score, _ in scorer.loglikelihood(
      [([TOK.bos_id] + TOK.encode("Q:"), TOK.encode(c)) for c in HAND_MADE[1][0]])]
  np.testing.assert_allclose(bits, [-5, -8], atol=1e-5)

  piqa = evaluate_task(examples, scorer, TOK)
  wino = evaluate_task(load_task(str(tmp_path), "winogrande"), scorer, TOK)
  # raw picks 0, 0, 1, 0 -> right, wrong, right, right; per char 0, 1, 0, 1 -> 2 of 4 right.
  assert piqa["acc"] == 0.75 and piqa["acc_norm"] == 0.5
  assert piqa["acc_stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
  assert piqa["acc_norm_stderr"] == pytest.approx(math.sqrt(0.5 * 0.5 / 3))
  assert wino["acc"] == wino["acc_norm"] == 1.0 and wino["num_examples"] == 1


def test_reads_every_task_of_the_eval_data(tmp_path):
  data_dir = eval_data_dir(tmp_path)
  for name, spec in TASKS.items():
    examples = load_task(data_dir, name, limit=5)
    assert len(examples) == 5
    for e in examples:
      assert 0 <= e.label < len(e.choices) >= 2
      assert (e.continuation is not None) == spec.partial
      if not spec.partial:  # every option is the context followed by " " + the answer
        assert all(c.startswith(" ") for c in e.choices)


@pytest.mark.parametrize("record,message", [
    ({"id": "1", "context": "c", "choices": [" a", " b"], "label": 2}, "label 2"),
    ({"id": "1", "context": "c", "choices": [" a"], "label": 0}, "at least two"),
    ({"id": "1", "choices": [" a", " b"], "label": 0}, "'context'"),
    ({"id": "1", "context": "c", "choices": [" a", " b"], "label": "0"}, "'label'"),
])
def test_bad_records_name_file_and_line(tmp_path, record, message):
  good = {"id": "0", "context": "c", "choices": [" a", " b"], "label": 0}
  write_task(tmp_path, "arc_easy", [good, record])
  with pytest.raises(ValueError, match=f"arc_easy.jsonl:2: .*{message}"):
    load_task(str(tmp_path), "arc_easy")


def test_missing_task_file_and_unknown_task(tmp_path):
  with pytest.raises(ValueError, match="no file .*hellaswag.jsonl.*--data_dir"):
    load_task(str(tmp_path), "hellaswag")
  with pytest.raises(ValueError, match="unknown task 'boolq'"):
    load_task(str(tmp_path), "boolq")


GOOD = {"id": "0", "context": "c", "choices": [" a", " b"], "label": 0}


@pytest.mark.parametrize("name", ["../outside", "{tmp_path}/outside"])
def test_a_task_name_is_never_a_path(tmp_path, name):
  """`--tasks` and `eval_tasks` name files: only the seven names do, so no name reaches a
  file outside the data directory, even where a valid one waits there."""
  name = name.format(tmp_path=tmp_path)
  data_dir = tmp_path / "eval_data"
  data_dir.mkdir()
  write_task(tmp_path, "outside", [GOOD])
  # where <data_dir>/<name>/<name>.jsonl leads for both names
  (tmp_path / "outside.jsonl").write_text((tmp_path / "outside" / "outside.jsonl").read_text())
  with pytest.raises(ValueError, match=f"unknown task '{name}'"):
    load_task(str(data_dir), name)


def test_the_whole_file_is_checked_when_one_example_is_asked_for(tmp_path):
  write_task(tmp_path, "piqa", [GOOD, GOOD, {**GOOD, "label": 5}])
  with pytest.raises(ValueError, match=r"piqa.jsonl:3: label 5"):
    load_task(str(tmp_path), "piqa", limit=1)


def test_invalid_utf8_names_file_and_line(tmp_path):
  write_task(tmp_path, "piqa", [GOOD])
  path = tmp_path / "piqa" / "piqa.jsonl"
  path.write_bytes(path.read_bytes() + b'{"id": "\xff"}\n')
  with pytest.raises(ValueError, match=r"piqa.jsonl:2: invalid UTF-8 at byte 8"):
    load_task(str(tmp_path), "piqa", limit=1)
