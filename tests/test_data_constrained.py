"""Data-constrained training (`data.train_tokens`, phd_jax/data/restrict.py): the train
split cut to its first whole documents holding U tokens, repeated in reshuffled epochs;
process shares, exact resume, the exact count in config.json and epochs in metrics.jsonl;
the validation split untouched; bad values refused in one line."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_helpers import assert_batches_equal, assert_resumes_exactly, take
from phd_jax import config as config_lib
from phd_jax import data, train
from phd_jax.data import text_files
from run_helpers import REPO_ROOT, tiny_config

NAME, SEQ_LEN, TRAIN_DOCS = "constrained_corpus", 32, 30
BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Distinct ASCII documents of varied lengths, prepared; the train split's texts in their
  stored order and their framed lengths under the byte tokenizer ([BOS] + bytes + [EOS])."""
  root = tmp_path_factory.mktemp("constrained")
  rng = np.random.default_rng(3)
  for split, count in (("train", TRAIN_DOCS), ("validation", 6)):
    with open(root / f"{split}.jsonl", "w") as f:
      for i in range(count):
        f.write(json.dumps({"text": f"{split} {i} " + "xy z" * int(rng.integers(0, 15))}) + "\n")
  data_dir = str(root / "tfds")
  builder = text_files.make_builder(NAME, data_dir, {
      split: text_files.expand([str(root / f"{split}.jsonl")])
      for split in ("train", "validation")})
  text_files.prepare(builder, progress=False)
  texts = [r["text"].decode() for r in tfds.data_source(NAME, split="train", data_dir=data_dir)]
  return dict(data_dir=data_dir, texts=texts, lengths=[len(t.encode()) + 2 for t in texts])


def _config(corpus, train_tokens, batch_size=1, prefetch=0):
  c = tiny_config()
  c.seq_len, c.batch_size = SEQ_LEN, batch_size
  c.data.update(source="tfds", name=NAME, data_dir=corpus["data_dir"], prefetch=prefetch,
                train_tokens=train_tokens)
  return c


def _prefix(lengths, train_tokens):
  """(documents, tokens) of the shortest run of leading documents with >= U tokens."""
  total = 0
  for documents, length in enumerate(lengths, 1):
    total += length
    if total >= train_tokens:
      return documents, total
  raise AssertionError("U beyond the split")


def _documents(stream, texts):
  """Indices of the whole documents, in order, in a lane's concatenated tokens."""
  index = {text: i for i, text in enumerate(texts)}
  found, start = [], None
  for pos, token in enumerate(stream.tolist()):
    if token == BOS:
      start = pos
    elif token == EOS:
      found.append(index[bytes(t - 3 for t in stream[start + 1:pos]).decode()])
  return found


def test_restricted_split_is_the_first_whole_documents_reaching_u(corpus):
  lengths = corpus["lengths"]
  for u in (1, lengths[0], lengths[0] + 1, sum(lengths[:7]), sum(lengths[:7]) + 1,
            sum(lengths)):
    restriction = data.make_iterator(_config(corpus, u), process_index=0,
                                     process_count=1).restriction
    assert (restriction.documents, restriction.tokens) == _prefix(lengths, u), u
    assert restriction.train_tokens == u
  assert data.make_iterator(_config(corpus, 0), process_index=0,
                            process_count=1).restriction is None


def test_each_epoch_is_a_fresh_permutation_of_exactly_the_kept_documents(corpus):
  """One lane: the stream is the kept documents, whole, once per epoch, in a new order."""
  lengths = corpus["lengths"]
  u = sum(lengths[:10]) - 3  # inside the 10th document: it is kept whole
  it = data.make_iterator(_config(corpus, u), process_index=0, process_count=1)
  documents, tokens = it.restriction.documents, it.restriction.tokens
  assert (documents, tokens) == (10, sum(lengths[:10]))
  epochs = 3
  stream = np.concatenate([b["tokens"][0] for b in take(it, math.ceil(epochs * tokens / SEQ_LEN))])
  assert stream[epochs * tokens - 1] == EOS  # every epoch is exactly `tokens` tokens
  order = _documents(stream[:epochs * tokens], corpus["texts"])
  per_epoch = [order[e * documents:(e + 1) * documents] for e in range(epochs)]
  assert len(order) == epochs * documents
  for epoch in per_epoch:
    assert sorted(epoch) == list(range(documents))
  assert len({tuple(epoch) for epoch in per_epoch}) == epochs  # reshuffled every epoch
  assert it.counters()["tokens"] == len(stream)


def test_processes_share_the_restricted_split(corpus):
  lengths = corpus["lengths"]
  u = sum(lengths[:6])
  whole = take(data.make_iterator(_config(corpus, u, batch_size=4), process_index=0,
                                  process_count=1), 8)
  shares = [take(data.make_iterator(_config(corpus, u, batch_size=4), process_index=p,
                                    process_count=2), 8) for p in range(2)]
  for step, batch in enumerate(whole):
    for key in ("tokens", "segment_ids", "positions"):
      np.testing.assert_array_equal(
          np.concatenate([shares[p][step][key] for p in range(2)]), batch[key])
  for lane in range(4):
    seen = _documents(np.concatenate([b["tokens"][lane] for b in whole]), corpus["texts"])
    assert seen and set(seen) <= set(range(6))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_mid_epoch_equals_uninterrupted(corpus, prefetch):
  lengths = corpus["lengths"]
  u = sum(lengths[:8])  # about two steps of 4 x 32 tokens per epoch
  config = _config(corpus, u, batch_size=4, prefetch=prefetch)
  stop = 5
  assert (stop * 4 * SEQ_LEN) % u  # mid-epoch
  state = assert_resumes_exactly(config, stop, 12)
  other = data.make_iterator(_config(corpus, sum(lengths[:9]), batch_size=4),
                             process_index=0, process_count=1)
  with pytest.raises(ValueError, match="saved with documents=8, this run has 9"):
    other.set_state(state)
  other.close()


def test_validation_split_is_never_restricted(corpus):
  restricted = data.make_iterator(_config(corpus, corpus["lengths"][0], batch_size=2),
                                  "validation", process_index=0, process_count=1)
  assert restricted.restriction is None
  whole = data.make_iterator(_config(corpus, 0, batch_size=2), "validation",
                             process_index=0, process_count=1)
  assert_batches_equal(take(restricted, 6), take(whole, 6))


def test_validation_refuses_bad_values_in_one_line(corpus):
  config = _config(corpus, -1, batch_size=8)
  with pytest.raises(config_lib.ConfigError,
                     match=r"^data.train_tokens must be an integer >= 0; got -1$"):
    config_lib.validate(config)
  config = _config(corpus, 1000, batch_size=8)
  config.data.source = "synthetic"
  with pytest.raises(config_lib.ConfigError, match=r"^data.train_tokens=1000 keeps the first "
                     r"documents .* data.source='synthetic' draws fresh samples every step"):
    config_lib.validate(config)


@pytest.mark.slow
def test_u_larger_than_the_split_is_refused_in_one_line(corpus, tmp_path):
  total = sum(corpus["lengths"])
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "phd_jax.main", "--config=configs/tiny.py",
         "--config.data.source=tfds", f"--config.data.name={NAME}",
         f"--config.data.data_dir={corpus['data_dir']}", f"--config.data.train_tokens={total + 1}",
         f"--config.seq_len={SEQ_LEN}", "--config.batch_size=8", "--config.eval_every=0",
         f"--workdir={workdir}"]
  out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  assert out.stderr.splitlines()[-1] == (
      f"phd_jax.main: error: data.train_tokens={total + 1} is more than the train split "
      f"holds: data.train_split='train' of dataset '{NAME}' has {total} tokens in "
      f"{TRAIN_DOCS} documents")
  assert not (workdir / "config.json").exists() and not (workdir / "metrics.jsonl").exists()


class _StopAt:
  """A preemption guard that asks the loop to save and stop after step `at`."""

  def __init__(self, at):
    self.at = at

  def __call__(self):
    return self

  def reached(self, step):
    return step == self.at

  def close(self):
    pass


def _train_config(corpus, u):
  config = _config(corpus, u, batch_size=8)
  config.model.update(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                      mlp_dim=32)
  config.update(num_steps=6, log_every=1, eval_every=0)
  config.optim.warmup_steps = 2
  config.checkpoint.update(every=2, async_save=False)
  return config


def _records(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return {r["step"]: r for r in map(json.loads, f)}


@pytest.mark.slow
def test_training_records_the_count_and_epochs_and_resumes_mid_epoch_bitwise(
    corpus, tmp_path, monkeypatch, capsys):
  lengths = corpus["lengths"]
  u = sum(lengths[:12]) - 1
  documents, tokens = _prefix(lengths, u)
  tokens_per_step = 8 * SEQ_LEN
  uninterrupted = tmp_path / "uninterrupted"
  train.train(_train_config(corpus, u), str(uninterrupted))
  assert (f"data.train_tokens={u}: the train split's first {documents} documents, {tokens} "
          "tokens per epoch") in capsys.readouterr().out
  saved = json.loads((uninterrupted / "config.json").read_text())["data"]
  assert (saved["train_tokens"], saved["train_tokens_exact"]) == (u, tokens)
  expected = _records(uninterrupted)
  assert sorted(expected) == list(range(1, 7))
  for step, record in expected.items():
    assert record["epochs"] == step * tokens_per_step / tokens

  stop = 3
  assert (stop * tokens_per_step) % tokens  # the interruption falls inside an epoch
  resumed = tmp_path / "resumed"
  monkeypatch.setattr(train, "PreemptionGuard", _StopAt(stop))
  assert train.train(_train_config(corpus, u), str(resumed))["status"] == "preempted"
  monkeypatch.undo()
  final = train.train(_train_config(corpus, u), str(resumed))
  assert final["restored"] is not None and final["step"] == 6
  got = _records(resumed)
  assert sorted(got) == list(range(1, 7))
  for step in got:
    for key in ("loss", "grad_norm", "epochs"):
      assert got[step][key] == expected[step][key], (step, key)
