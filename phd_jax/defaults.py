"""Defaults of every experiment: config files start from `get_config()` here.

Run any config with
  python -m phd_jax.main --config=configs/tiny.py:PHD-CSWA-2-4-8 --workdir=/tmp/run
where the text after ':' is the variant (Vanilla, PHD-K, PHD-SWA-K-W-∞, PHD-CSWA-K-W-C, or
the sibling method's PLT-L-W) and any field can be overridden on the command line, e.g.
--config.optim.lr=1e-3.
"""

import dataclasses

import ml_collections

from phd_jax.model import ModelConfig


def get_config(variant=None):
  c = ml_collections.ConfigDict()

  # Variant (PAPER.md): the name sets k, window and chunk (PLT: loops and window).
  c.phd = ml_collections.ConfigDict()
  c.phd.variant = variant or "Vanilla"
  c.phd.window_unit = "tokens"  # SWA window counted in hidden tokens, or "positions"
  c.phd.positions = "shared"  # RoPE: every copy at pos(p); "expanded": K*pos(p) + copy
  # PLT variants (PLT-L-W: loops, window; phd_jax/plt.py): what the gate reads ("query" or
  # "hidden"), a and b of a later loop's input a*E(t) + b*H(t-1), H after the final norm
  c.phd.plt_gate = "query"
  c.phd.plt_emb_scale = 1.0
  c.phd.plt_hidden_scale = 1.0
  c.phd.plt_norm_per_loop = True

  # Decoder shape (OLMo2 style); every other model field (norms, dtype, remat, attention
  # implementation, ...) at its default, which `phd_jax.model.ModelConfig` holds and documents.
  c.model = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig(
      vocab_size=50304, d_model=768, num_layers=12, num_heads=12, num_kv_heads=4,
      head_dim=64, mlp_dim=2048)))

  # Training. batch_size is the GLOBAL number of sequences per optimizer step, summed over
  # all hosts and devices; each host loads batch_size / num_processes of them.
  c.seed = 0
  c.seq_len = 4096  # original tokens per sequence (the model runs K * seq_len copies)
  c.batch_size = 512
  c.microbatches = 1  # gradient accumulation: the step scans over this many slices
  c.num_steps = 100_000
  c.log_every = 50
  c.eval_every = 1000  # validation loss every N steps (0 = never)
  c.eval_batches = 8
  c.eval_tasks = ""  # zero-shot tasks also scored at each eval, e.g. "hellaswag,arc_easy"
  c.eval_limit = 200  # ... on the first N examples of each
  c.eval_data_dir = "eval_data"  # <task>/<task>.jsonl files (README: Evaluation)
  c.profile_steps = ""  # e.g. "10:15" traces steps 10..14 with jax.profiler

  # Weights & Biases beside TensorBoard and metrics.jsonl (phd_jax/tracking.py; needs
  # `pip install wandb`): off while wandb_project is "".
  c.metrics = ml_collections.ConfigDict()
  c.metrics.wandb_project = ""
  c.metrics.wandb_entity = ""  # team or user ("" = the account's default)
  c.metrics.wandb_mode = "online"  # online | offline (upload later: wandb sync) | disabled

  c.optim = ml_collections.ConfigDict()
  c.optim.schedule = "cosine"  # cosine | linear | wsd (warmup-stable-decay)
  c.optim.lr = 4e-4  # peak learning rate
  c.optim.warmup_steps = 2000
  c.optim.min_lr_ratio = 0.1  # final lr = min_lr_ratio * lr
  c.optim.decay_fraction = 0.2  # wsd: share of num_steps spent decaying
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1  # not applied to norm scales nor embeddings (OLMo2)
  c.optim.grad_clip = 1.0  # global-norm clipping (0 = off)
  c.optim.z_loss = 0.0

  # Device mesh. -1 fills with the remaining devices. dcn_* split the same axes across
  # slices (TPU multislice) or nodes (GPU clusters); the product of each axis is ici * dcn.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.dcn_data = 1
  c.mesh.dcn_fsdp = 1
  c.mesh.dcn_tensor = 1

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # synthetic | stdlib (embedded corpus) | tfds
  c.data.name = ""  # tfds dataset name, e.g. "c4/en:3.1.0"
  c.data.data_dir = ""  # local or gs:// directory of prepared array_record datasets
  # (for "stdlib": where it is prepared on first use; "" = $PHD_JAX_CACHE or ~/.cache/phd_jax/tfds)
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.text_field = "text"
  c.data.tokenizer = "byte"  # byte | sentencepiece | hf
  c.data.tokenizer_path = ""  # model file for sentencepiece / tokenizer.json for hf
  # Data-constrained training (data/restrict.py): train on the train split's first
  # documents holding >= train_tokens tokens, repeated in epochs (0 = the whole split; not
  # for the token sources). train_tokens_exact is written by the trainer: the tokens one
  # epoch of them trains on (0 when unrestricted); metrics.jsonl then records "epochs".
  c.data.train_tokens = 0
  c.data.train_tokens_exact = 0
  c.data.num_workers = 0  # processes that read and tokenize documents (0 = in-process)
  c.data.prefetch = 2
  # "pointer_chase" (data/pointer_chase.py): permutation size, lookups per answer, and the
  # table's form ("pairs": one token per entry; "interleaved" / "marked": x, f(x) tokens)
  c.data.chase_nodes = 16
  c.data.chase_hops = 1
  c.data.chase_table = "interleaved"

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 1000  # save every N steps (0 = only at the end)
  c.checkpoint.keep = 3  # keep the last N
  c.checkpoint.keep_period = 0  # also keep every N-th step forever (0 = off)
  c.checkpoint.async_save = True
  # Record a CRC-32 of every file at save (in the background) and check the files a resume
  # or load reads against it (README: Damaged checkpoints).
  c.checkpoint.checksums = True
  c.checkpoint.warm_start = ""  # another run's checkpoint (params only) or hf:DIR
  return c


def released_plt_settings(c):
  """A PLT variant's `phd.plt_*` as the released LoopCoder checkpoint was trained (its
  config: a = plt_emb_scale 0.707, b = plt_hidden_scale 0.053, the gate read from the normed
  hidden state), where get_config keeps the configuration class's defaults (a = b = 1, the
  query gate). Any other variant is left as it is."""
  if c.phd.variant.strip().upper().startswith("PLT"):
    c.phd.update(plt_emb_scale=0.707, plt_hidden_scale=0.053, plt_gate="hidden")
  return c


def paper_scale(c, *, d_model, num_layers, num_heads, num_kv_heads, head_dim, mlp_dim,
                batch_size, num_steps, lr):
  """The settings every paper-sized config shares (OLMo2 recipe, ours where the paper is
  silent): vocabulary 50304, 4096-token sequences, bfloat16 compute, full remat, FSDP over
  all devices; plus the given shape and schedule.

  Data and tokenizer (the paper names neither; ours): FineWeb-Edu prepared as the tfds
  dataset `fineweb_edu` in `data/tfds`, and the GPT-NeoX-20B tokenizer (50,277 ids, padded
  to the paper's 50,304 as OLMo 1 and Pythia do). With internet, from the directory you
  train in:

    curl -L --create-dirs -o tokenizers/gpt-neox-20b/tokenizer.json \
        https://huggingface.co/EleutherAI/gpt-neox-20b/resolve/main/tokenizer.json
    huggingface-cli download HuggingFaceFW/fineweb-edu --repo-type=dataset \
        --include='sample/100BT/*' --local-dir=raw/fineweb-edu
    python -m phd_jax.data.prepare --name=fineweb_edu --data_dir=data/tfds \
        --train='raw/fineweb-edu/sample/100BT/*.parquet' --validation_percent=0.1

  `sample/100BT` holds ~100B tokens (the 151M run); the 300B and 500B runs need the full
  corpus (`--include='data/*'`, 1.3T tokens). Elsewhere, point --config.data.data_dir /
  --config.data.tokenizer_path at the copies (gs:// works for the dataset).
  """
  c.model.update(dict(vocab_size=50304, d_model=d_model, num_layers=num_layers,
                      num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                      mlp_dim=mlp_dim, dtype="bfloat16", remat="full"))
  c.seq_len = 4096
  c.batch_size = batch_size
  c.num_steps = num_steps
  c.optim.lr = lr
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.data.source = "tfds"
  c.data.name = "fineweb_edu"
  c.data.data_dir = "data/tfds"
  c.data.tokenizer = "hf"
  c.data.tokenizer_path = "tokenizers/gpt-neox-20b/tokenizer.json"
  return c
