from configs import tiny
def get_config(variant=None):
  c = tiny.get_config(variant)
  c.data.source = "synthetic"
  c.num_steps = 30; c.optim.warmup_steps = 5; c.log_every = 10; c.eval_every = 15; c.seq_len=64; c.batch_size=8
  return c
