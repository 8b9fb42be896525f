"""The paper's 550M model (Table 2 and the ablations), OLMo2 architecture.

  python -m phd_jax.main --config=configs/olmo2_550m.py:PHD-SWA-3-16-inf --workdir=gs://BUCKET/phd_550m

From the paper: 16 layers, d_model 1536, FFN 4096 per projection (8192 quoted for gate+up),
16 query / 4 kv heads of dim 96, 300B tokens, variants Vanilla and PHD-SWA-{2,3,5}-16-∞.
Parameters: 550,977,024 with vocabulary 50304. Paper results: loss 2.782 (Vanilla),
2.753 / 2.739 / 2.725 (K = 2 / 3 / 5); 7-task average 49.3 / 50.1 / 50.2 / 51.1.
Ours: seq_len 4096, batch 512 sequences (2M tokens), 143,051 steps = 300B tokens, peak lr
6e-4, cosine to 10%, AdamW (0.9, 0.95, 1e-8), weight decay 0.1, bfloat16 compute, FSDP.

Data and tokenizer: FineWeb-Edu and GPT-NeoX-20B's tokenizer.json, which the dry run
and training look for in data/tfds and tokenizers/; `phd_jax.defaults.paper_scale` gives
the commands that fetch and prepare them.
"""

from phd_jax import defaults


def get_config(variant=None):
  c = defaults.get_config(variant or "PHD-SWA-2-16-inf")
  return defaults.paper_scale(c, d_model=1536, num_layers=16, num_heads=16, num_kv_heads=4,
                             head_dim=96, mlp_dim=4096, batch_size=512, num_steps=143_051,
                             lr=6e-4)
