"""Shared by the decoding tests (PHD and PLT): a small model shape, random prompts, the
training forward's logits as the reference, cached prefill + steps checked against it."""

import numpy as np
from flax import nnx

from phd_jax import decode
from phd_jax.decode import engine
from phd_jax.model import ModelConfig

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64, rope_theta=10_000.0)


def random_tokens(seed, *lengths):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, CFG.vocab_size, n).tolist() for n in lengths]


def training_logits(model, sequences):
  """Final-copy logits `[B, T, V]` of the training forward (rows right-padded, segment 0)."""
  tokens_BT = np.zeros((len(sequences), max(map(len, sequences))), np.int32)
  segment_ids_BT = np.zeros_like(tokens_BT)
  for row, sequence in enumerate(sequences):
    tokens_BT[row, :len(sequence)], segment_ids_BT[row, :len(sequence)] = sequence, 1
  return np.asarray(_training_forward(model, tokens_BT, segment_ids_BT))


@nnx.jit
def _training_forward(model, tokens_BT, segment_ids_BT):
  return model(tokens_BT, segment_ids_BT)


def assert_prefill_and_steps_equal_forward(model, prompt_lengths, steps, cache_len):
  """Prefill of prompts of `prompt_lengths` (left-padded together), then `steps` cached
  steps feeding each row's true next tokens: every logit row equals the training
  forward's at the same position."""
  sequences = random_tokens(1, *(n + steps for n in prompt_lengths))
  decoder = decode.Decoder(model)
  logits_BV, cache = decoder.prefill([s[:n] for s, n in zip(sequences, prompt_lengths)],
                                     cache_len=cache_len, max_new_tokens=steps + 1)
  got = [logits_BV]
  for i in range(steps):
    logits_BV, cache = decoder.step(cache, [s[n + i] for s, n in zip(sequences, prompt_lengths)])
    got.append(logits_BV)
  got_BSV = np.stack(got, axis=1)
  want_BTV = training_logits(model, sequences)
  for row, n in enumerate(prompt_lengths):
    np.testing.assert_allclose(got_BSV[row], want_BTV[row, n - 1:n + steps], atol=1e-5,
                               rtol=1e-5)


def full_prefill(decoder, prompts, cache_len):
  """The paper's SWA prefill: every prompt token's hidden copies."""
  laid, _ = decoder.layout(prompts, 1, cache_len)
  return engine._prefill_jit(decoder.graphdef, decoder.state, None, laid.first_slot_B,
                             cache_len, laid.tokens_BT.shape[1], laid.tokens_BT)


def brute_force_greedy(model, prompt, steps):
  """Argmax continuation, one training forward per new token (no cache)."""
  tokens = list(prompt)
  for _ in range(steps):  # right padding to a fixed length: causal, so it changes nothing
    padded = tokens + [0] * (len(prompt) + steps - len(tokens))
    tokens.append(int(np.argmax(training_logits(model, [padded])[0, len(tokens) - 1])))
  return tokens[len(prompt):]
