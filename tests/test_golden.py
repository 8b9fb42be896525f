"""Golden numbers: the loss and gradient norm of a tiny PHD-CSWA model over its first
training steps, pinned to a relative 1e-6.

The equivalence tests compare two paths through the same code, so a change that moves both
sides (an initialiser, the loss normalisation, an optimizer default, the synthetic data, a
mask rule) passes them; it fails here. Deterministic on CPU: seed 0, float32, one device,
the XLA flags of conftest.py.

A change that moves these numbers on purpose must say why in its commit message. To
regenerate them, run `.venv/bin/python -m pytest -q -p no:xdist tests/test_golden.py`: the
failure prints the new GOLDEN list, ready to paste over the one below.
"""

import jax
import numpy as np

from phd_jax import data, sharding, train
from run_helpers import small_config

STEPS = 5
# (loss, grad_norm) after each of the first STEPS steps of small_config() on one CPU device
GOLDEN = [
    (4.168665409088135, 2.1909403800964355),
    (4.156339168548584, 1.1019092798233032),
    (4.153022289276123, 0.8423800468444824),
    (4.17115592956543, 1.3623067140579224),
    (4.059138298034668, 0.9621079564094543),
]


def _first_steps():
  config = small_config("PHD-CSWA-2-2-4", num_steps=STEPS)
  assert (config.seed, config.model.dtype) == (0, "float32")
  training = train.setup(config, sharding.make_mesh(config, jax.devices()[:1]))
  current = training.init()
  batches = data.make_iterator(config)
  try:
    logged = []
    for _ in range(STEPS):
      current, metrics = training.step(current, training.global_batch(next(batches)))
      logged.append((float(metrics["loss"]), float(metrics["grad_norm"])))
  finally:
    batches.close()
  return logged


def test_first_training_steps_give_the_golden_loss_and_gradient_norm():
  got = _first_steps()
  pasteable = "GOLDEN = [\n" + "".join(f"    ({loss!r}, {norm!r}),\n" for loss, norm in got) + "]"
  np.testing.assert_allclose(got, GOLDEN, rtol=1e-6, atol=0, err_msg=pasteable)
