"""Continue prompts with a trained checkpoint.

  python -m phd_jax.generate --workdir=DIR --prompt="def main(" [--prompt="import "]
      [--max_new_tokens=64] [--temperature=0.8 --top_p=0.95 --top_k=0 --seed=0]
  python -m phd_jax.generate --checkpoint=DIR/checkpoints/600 --prompt=...

Variant, model shape and tokenizer come from the config saved with the checkpoint (a
workdir means its newest complete step; an export works too). Prompts are framed as the
training documents are, `[BOS] + text`, and each continuation ends at EOS or after
--max_new_tokens. Several --prompt flags run as one batch. Parameters load onto a mesh of
this host's devices, --mesh=DATA,FSDP,TENSOR (default: one device), and decoding runs on
it: prompts over data and fsdp, heads, caches and vocabulary over tensor.
"""

from __future__ import annotations

from absl import app, flags, logging

from phd_jax import data, decode, sharding
from phd_jax.state import load_model

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Flags of the command (defined only when it runs: `phd_jax.main` shares some names)."""
  flags.DEFINE_string("workdir", None, "Training workdir: its newest complete checkpoint.")
  flags.DEFINE_string("checkpoint", None, "A checkpoint step folder or a params export.")
  flags.DEFINE_multi_string("prompt", None, "Text to continue (repeat for a batch).")
  flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt at most.")
  flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
  flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = all).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
  flags.DEFINE_integer("seed", 0, "PRNG seed of the sampler.")
  flags.DEFINE_string("mesh", None, "DATA,FSDP,TENSOR mesh sizes over this host's devices, "
                      "-1 fills (e.g. 1,1,-1: tensor-parallel over all); default one device.")


def continue_texts(path, prompts: list[str], max_new_tokens: int, mesh=None,
                   **sampling) -> list[str]:
  """The continuation of each text prompt by the checkpoint at `path`, decoded on `mesh`
  (as `state.load_model` takes it: a Mesh, (data, fsdp, tensor) sizes, None = one device)."""
  if not prompts or any(not isinstance(p, str) or not p for p in prompts):
    raise ValueError(f"prompts must be non-empty strings; got {prompts!r}")
  model, config, _, _ = load_model(path, mesh)
  tokenizer = data.make_tokenizer(config)
  ids = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]
  # decoding runs where the parameters lie (`decode.Decoder` finds their mesh)
  out = decode.generate(model, ids, max_new_tokens, eos_id=tokenizer.eos_id, **sampling)
  return [tokenizer.decode(row) for row in out]


def main(argv) -> None:
  del argv
  if not FLAGS["verbosity"].present:  # Orbax logs every restore at INFO; -v 0 shows it
    logging.set_verbosity(logging.WARNING)
  if (FLAGS.workdir is None) == (FLAGS.checkpoint is None):
    raise app.UsageError("pass exactly one of --workdir and --checkpoint")
  if not FLAGS.prompt:
    raise app.UsageError("pass at least one --prompt")
  texts = continue_texts(FLAGS.workdir or FLAGS.checkpoint, FLAGS.prompt, FLAGS.max_new_tokens,
                         FLAGS.mesh and sharding.parse_sizes(FLAGS.mesh),
                         temperature=FLAGS.temperature,
                         top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed)
  for prompt, text in zip(FLAGS.prompt, texts):
    print(prompt + text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
