"""The lm-evaluation-harness model: offline lm-eval on YAML tasks over a few lines of the
eval data gives phd_jax.evaluate's accuracies; rolling and generation requests."""

import os
import tempfile
import types

# lm-eval reads local JSON through `datasets`: no hub, and a cache of our own.
os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                  HF_DATASETS_CACHE=tempfile.mkdtemp(prefix="hf_datasets_"))

import lm_eval  # noqa: E402
import pytest  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import phd_jax.eval.harness  # noqa: E402,F401  (registers "phd_jax")
from eval_helpers import eval_config, eval_data_dir  # noqa: E402
from phd_jax import checkpoint, decode, sharding, state  # noqa: E402
from phd_jax.eval.scorer import encode_pair  # noqa: E402
from phd_jax.eval.tasks import evaluate_task, load_task  # noqa: E402

pytestmark = pytest.mark.slow  # lm-eval over an exported model: the longest in-process tests

SAMPLE = 8
TASK_YAML = """task: {name}_sample
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
  """lm-eval's `phd_jax` model over a params-only export, built through the registry."""
  config = eval_config("PHD-SWA-2-2-inf")
  mesh = sharding.make_mesh(config, sizes=(2, 2, 2))
  export = tmp_path_factory.mktemp("export") / "params"
  checkpoint.export_params(export, state.init_state(config, mesh)[1].params, config)
  return get_model("phd_jax").create_from_arg_string(f"checkpoint={export}",
                                                     {"batch_size": 4, "device": None})


def test_lm_eval_yaml_tasks_give_phd_jax_accuracies(lm, tmp_path):
  data_dir = eval_data_dir(tmp_path)
  names = ["arc_easy", "hellaswag"]
  sample_dir = tmp_path / "sample"
  for name in names:
    lines = open(os.path.join(data_dir, name, f"{name}.jsonl")).readlines()[:SAMPLE]
    (sample_dir / name).mkdir(parents=True)
    (sample_dir / name / f"{name}.jsonl").write_text("".join(lines))
    (tmp_path / f"{name}.yaml").write_text(
        TASK_YAML.format(name=name, path=sample_dir / name / f"{name}.jsonl"))
  out = lm_eval.simple_evaluate(model=lm, tasks=[f"{n}_sample" for n in names],
                                task_manager=TaskManager(include_path=str(tmp_path)))
  for name in names:
    expected = evaluate_task(load_task(str(sample_dir), name), lm.scorer, lm.tokenizer)
    got = out["results"][f"{name}_sample"]
    for metric in ("acc", "acc_norm"):
      assert got[f"{metric},none"] == pytest.approx(expected[metric], abs=1e-9)
      assert got[f"{metric}_stderr,none"] == pytest.approx(expected[f"{metric}_stderr"])


def request(*args):
  return types.SimpleNamespace(args=args)


def test_rolling_loglikelihood_is_the_document_after_bos(lm):
  texts = ["A short one.", "A longer document " * 8]  # 144 bytes: three 64-token windows
  rolling = lm.loglikelihood_rolling([request(t) for t in texts])
  whole = lm.loglikelihood([request("", t) for t in texts])
  assert encode_pair(lm.tokenizer, "", texts[0])[0] == [lm.tokenizer.bos_id]
  assert rolling == pytest.approx([score for score, _ in whole], rel=1e-6)


def test_generate_until_is_greedy_decoding_cut_at_the_stop_text(lm):
  contexts = ["Question: 2 + 2 =", "Once upon a time"]
  got = lm.generate_until([request(c, {"until": ["e"], "max_gen_toks": 6}) for c in contexts])
  prompts = [[lm.tokenizer.bos_id] + lm.tokenizer.encode(c) for c in contexts]
  generated = decode.generate(lm.model, prompts, 6, eos_id=lm.tokenizer.eos_id)
  assert got == [lm.tokenizer.decode(ids).split("e")[0] for ids in generated]
