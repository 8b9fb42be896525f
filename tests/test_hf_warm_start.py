"""Continued pretraining: a transformers checkpoint warm-starts a PHD-CSWA training run."""

import numpy as np
import pytest
from flax import nnx

from phd_jax import checkpoint, hf, sharding, state, train
import hf_helpers
from run_helpers import losses


@pytest.mark.slow
def test_hf_checkpoint_continues_as_phd_cswa_on_the_tiny_corpus(tmp_path):
  # The byte-level tiny corpus needs the tiny config's vocabulary of 384.
  hf_helpers.tiny_hf_model("olmo2", vocab_size=384).save_pretrained(tmp_path / "hf")
  config = hf_helpers.phd_config(tmp_path / "hf", "PHD-CSWA-2-4-8")
  config.update(num_steps=5, seq_len=32, batch_size=8, log_every=1, eval_every=0)
  config.optim.update(lr=1e-4, warmup_steps=0)
  config.checkpoint.warm_start = f"hf:{tmp_path / 'hf'}"
  imported = hf.load_params(str(tmp_path / "hf"), config)

  train.train(config, str(tmp_path / "run"))

  logged = losses(tmp_path / "run")
  assert sorted(logged) == [1, 2, 3, 4, 5] and np.isfinite(list(logged.values())).all()
  abstract = state.abstract_state(config, sharding.make_mesh(config))
  trained = checkpoint.load_params(tmp_path / "run", abstract.params)
  # Five Adam steps move each parameter by about lr = 1e-4 at most: the run started from
  # the imported weights (a fresh init differs from them by ~0.02 on average).
  imported = dict(nnx.to_flat_state(imported))
  moved = [np.abs(np.asarray(var.get_value()) - imported[path].get_value()).max()
           for path, var in nnx.to_flat_state(trained)]
  assert 0 < max(moved) < 1e-3
