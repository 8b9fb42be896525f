"""The paper's 1.2B model (Table 1), OLMo2 architecture.

  python -m phd_jax.main --config=configs/olmo2_1b.py:PHD-CSWA-3-16-32 --workdir=gs://BUCKET/phd_1b

From the paper: 16 layers, d_model 2048, FFN 8192 per projection (the quoted 16384 counts
gate and up together), 32 query / 8 kv heads of dim 64, 500B tokens, variants Vanilla,
PHD-CSWA-2-16-32, PHD-CSWA-3-16-32. Parameters: 1,179,232,256 with vocabulary 50304.
Paper results: loss 2.601 / 2.576 / 2.567; 7-task average 54.7 / 56.2 / 56.7.
Ours (the paper is silent; OLMo2's recipe): seq_len 4096, batch 1024 sequences (4M
tokens), 119,209 steps = 500B tokens, peak lr 4e-4, 2000 warmup steps, cosine to 10%,
AdamW (0.9, 0.95, 1e-8), weight decay 0.1, clipping 1.0, bfloat16 compute, FSDP.

Data and tokenizer: FineWeb-Edu and GPT-NeoX-20B's tokenizer.json, which the dry run
and training look for in data/tfds and tokenizers/; `phd_jax.defaults.paper_scale` gives
the commands that fetch and prepare them.
"""

from phd_jax import defaults


def get_config(variant=None):
  c = defaults.get_config(variant or "PHD-CSWA-3-16-32")
  return defaults.paper_scale(c, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                             head_dim=64, mlp_dim=8192, batch_size=1024, num_steps=119_209,
                             lr=4e-4)
