"""When does PHD pay? (a) More epochs over the same unique data, or K copies of each token.

  python -m phd_jax.sweep --config=configs/epochs.py --workdir=DIR --seeds=0,1 \
      --variants=Vanilla@budget_epochs=1,Vanilla@budget_epochs=2,Vanilla@budget_epochs=4,\
Vanilla@budget_epochs=8,Vanilla@budget_epochs=16,Vanilla@budget_epochs=32,\
PHD-CSWA-2-4-8@budget_epochs=1,PHD-CSWA-2-4-8@budget_epochs=2,PHD-CSWA-2-4-8@budget_epochs=4,\
PHD-CSWA-2-4-8@budget_epochs=8,PHD-CSWA-2-4-8@budget_epochs=16,PHD-CSWA-2-4-8@budget_epochs=32,\
PHD-CSWA-4-4-8@budget_epochs=1,PHD-CSWA-4-4-8@budget_epochs=2,PHD-CSWA-4-4-8@budget_epochs=4,\
PHD-CSWA-4-4-8@budget_epochs=8,PHD-CSWA-4-4-8@budget_epochs=16,PHD-CSWA-4-4-8@budget_epochs=32
  python -m phd_jax.compare DIR --output_dir=docs --name=epochs

Design. The unique data is fixed: U = 122,501 byte tokens, the stdlib corpus's first 9
documents under Python 3.11 (`data.train_tokens` keeps whole documents: on another Python
the count differs a little; each run's config.json holds it as `data.train_tokens_exact`,
and `metrics.jsonl` records the epochs seen). A training budget is counted in Vanilla
epochs over U: `budget_epochs` = B buys Vanilla B epochs (B * 120 steps of 8 x 128 tokens,
1.003 epochs each) and a K-copy variant B / K epochs, whose steps cost 1.9x (K = 2) and
3.7x (K = 4) a Vanilla step in FLOPs (the output layer runs once per token), so a PHD point
spends 4-7% fewer training FLOPs than the Vanilla of its budget. Each
(variant, budget) is its own run with its own cosine schedule ending at its last step, so a
point is never the middle of a longer run. Held-out loss every 120 steps (each Vanilla
epoch) on 32 validation batches (the validation split is never restricted) shows where
Vanilla starts to overfit.
`compare` pairs each PHD point with the Vanilla of the same budget (same `@` settings).

Model, window and optimizer are configs/repro.py's (0.25M parameters, W = 4, C = 8 at
T = 128); only the batch (8 instead of 32, so that one epoch of U is 120 steps) and the
warmup (10 steps: the shortest run, K = 4 at one budget epoch, has 30) differ. U is small
enough that Vanilla's 32 epochs (3,840 steps) fit the CPU budget: 16 epochs is where
Muennighoff et al. (2023) find repetition has stopped being worth fresh data, and budget
32 was added once seed 0 showed Vanilla overfitting at 16 and PHD-CSWA-2 level with it
there. All values are ours.
"""

import os

from phd_jax import config as config_lib
from phd_jax import masks

STEPS_PER_EPOCH = 120  # of batch_size * seq_len = 1,024 tokens: one epoch of U


def get_config(variant=None):
  c = config_lib.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "repro.py"), variant)
  copies = masks.parse_variant(variant or "Vanilla").k
  c.batch_size = 8
  c.data.train_tokens = 122_501
  c.budget_epochs = 1  # Vanilla epochs over U that this run's FLOPs buy
  c.num_steps = c.get_ref("budget_epochs") * STEPS_PER_EPOCH // copies
  c.optim.warmup_steps = 10
  c.eval_every = 120
  c.eval_batches = 32
  c.checkpoint.every = 120
  return c
