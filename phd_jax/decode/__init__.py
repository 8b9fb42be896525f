"""Inference for every PHD variant: caches, prefill, decoding steps, sampling, generation.

  from phd_jax import decode
  decode.generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=32, temperature=0.8, top_p=0.9)
  decode.kv_cache_bytes(config, seq_len=4096, batch=1)
  decode.Decoder(model, mesh=mesh)  # prefill, steps, generation on a (data, fsdp, tensor) mesh

The KV cache of any PHD-K model has exactly the shape and bytes of a vanilla model's;
PHD-SWA/CSWA add a window of W (or W*(K-1)) hidden K/V entries per layer. PLT models
(`decode/loops.py`) keep loop 0's cache, the later loops' last W-1 K/V per layer, and run
every loop of a new token in one forward.
"""

from phd_jax.decode.cache import Cache, HiddenWindow, init_cache, kv_cache_bytes, window_entries
from phd_jax.decode.engine import Decoder, generate, hidden_prefill_tokens
from phd_jax.decode.prompts import POWERS_OF_TWO, check_prompts
from phd_jax.decode.sampling import Sampling, sample

__all__ = ["POWERS_OF_TWO", "Cache", "Decoder", "HiddenWindow", "Sampling", "check_prompts",
           "generate", "hidden_prefill_tokens", "init_cache", "kv_cache_bytes", "sample",
           "window_entries"]
