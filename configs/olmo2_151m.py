"""The paper's 151M pilot size (its shape is not given; this one is ours).

  python -m phd_jax.main --config=configs/olmo2_151m.py:PHD-CSWA-2-16-32 --workdir=gs://BUCKET/phd_151m

Ours: 12 layers, d_model 768, 12 query / 4 kv heads of dim 64, FFN 2048 per projection,
untied, vocabulary 50304: 152,795,904 parameters, the closest round OLMo2-style shape to
the paper's 151M. The paper trains it on 100B tokens: seq_len 4096, batch 256 sequences
(1M tokens), 95,367 steps, peak lr 1e-3 (ours), cosine to 10%, bfloat16 compute, full
remat, FSDP over all devices.

Data and tokenizer: FineWeb-Edu and GPT-NeoX-20B's tokenizer.json, which the dry run
and training look for in data/tfds and tokenizers/; `phd_jax.defaults.paper_scale` gives
the commands that fetch and prepare them.
"""

from phd_jax import defaults


def get_config(variant=None):
  c = defaults.get_config(variant or "PHD-CSWA-2-16-32")
  return defaults.paper_scale(c, d_model=768, num_layers=12, num_heads=12, num_kv_heads=4,
                             head_dim=64, mlp_dim=2048, batch_size=256, num_steps=95_367,
                             lr=1e-3)
