"""The launch scripts: their dry runs print the expected commands (expected text written
out here), shellcheck passes, bad arguments fail early with a message, local.sh stops
every rank when one fails, the TPU worker helper runs/follows/stops a run, and the
evaluator job (--evaluator) starts beside training on SLURM and TPU VMs (a real 2-process
training run through local.sh: test_multiprocess.py)."""

import os
import shlex
import signal
import subprocess
import textwrap
import time

import pytest

from run_helpers import REPO_ROOT

LAUNCH = REPO_ROOT / "launch"
SCRIPTS = ["local.sh", "gpu_slurm.sh", "tpu_pod.sh", "tpu_worker.sh"]


def launch(script, *args, env=None, check=True, timeout=60):
  """Runs launch/<script> in a clean environment (plus `env`)."""
  full_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
              "PYTHON": "python3", "TMPDIR": "/tmp", **(env or {})}
  proc = subprocess.run([str(LAUNCH / script), *args], env=full_env, capture_output=True,
                        text=True, timeout=timeout, cwd=REPO_ROOT)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def lines(text):
  return textwrap.dedent(text).strip("\n").splitlines()


# ---------------------------------------------------------------- all scripts

def test_shellcheck_passes_on_every_script():
  paths = sorted(p.name for p in LAUNCH.glob("*.sh"))
  assert paths == sorted(SCRIPTS + ["common.sh"])
  proc = subprocess.run(["shellcheck", "--external-sources", *paths], cwd=LAUNCH,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_strict_and_have_help(script):
  text = (LAUNCH / script).read_text()
  assert "\nset -euo pipefail\n" in text
  assert os.access(LAUNCH / script, os.X_OK)
  out = launch(script, "--help").stdout
  assert out.startswith(f"Usage: launch/{script}")
  assert "--dry_run" in out


# ---------------------------------------------------------------- local.sh

def test_local_dry_run_cpu_two_processes_four_devices():
  out = launch("local.sh", "--num_processes", "2", "--devices_per_process=4", "--platform",
               "cpu", "--port", "23456", "--dry_run", "--", "--config=configs/tiny.py",
               "--workdir", "/tmp/run", "--config.data.name=a b").stdout
  cmd = ("setsid env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 "
         "python3 -m phd_jax.main --config=configs/tiny.py --workdir /tmp/run "
         "'--config.data.name=a b' --coordinator=localhost:23456 --num_processes=2")
  assert out.splitlines() == [
      "mkdir -p /tmp/run/logs",
      f"{cmd} --process_id=0 >> /tmp/run/logs/rank_0.log 2>&1 &",
      f"{cmd} --process_id=1 >> /tmp/run/logs/rank_1.log 2>&1 &",
      "wait",
  ]
  # the printed line is valid shell whose words are the arguments given
  words = shlex.split(out.splitlines()[1])
  assert words[words.index("--workdir") + 2] == "--config.data.name=a b"


def test_local_dry_run_replaces_an_inherited_device_count():
  env = {"XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  out = launch("local.sh", "--num_processes=3", "--devices_per_process", "2", "--port=7000",
               "--python", "/opt/py/bin/python", "--dry_run", "--",
               "--config=configs/tiny.py:PHD-SWA-2-16-∞", "--workdir=w", env=env).stdout
  assert out.splitlines() == ["mkdir -p w/logs"] + [
      "setsid env JAX_PLATFORMS=cpu "
      "'XLA_FLAGS=--xla_cpu_foo=1 --xla_force_host_platform_device_count=2' "
      "/opt/py/bin/python -m phd_jax.main '--config=configs/tiny.py:PHD-SWA-2-16-∞' "
      f"--workdir=w --coordinator=localhost:7000 --num_processes=3 --process_id={i} "
      f">> w/logs/rank_{i}.log 2>&1 &" for i in range(3)] + ["wait"]


def test_local_dry_run_gpu_splits_the_visible_gpus():
  out = launch("local.sh", "--num_processes", "2", "--platform", "gpu", "--port", "9000",
               "--log_dir", "/logs", "--dry_run", "--", "--config=c.py", "--workdir=gs://b/w",
               env={"CUDA_VISIBLE_DEVICES": "4,5,6,7"}).stdout
  assert out.splitlines() == lines(f"""
      python3 {LAUNCH}/check_accelerator.py gpu
      mkdir -p /logs
      setsid env JAX_LOCAL_DEVICE_IDS=0,1 python3 -m phd_jax.main --config=c.py --workdir=gs://b/w --coordinator=localhost:9000 --num_processes=2 --process_id=0 >> /logs/rank_0.log 2>&1 &
      setsid env JAX_LOCAL_DEVICE_IDS=2,3 python3 -m phd_jax.main --config=c.py --workdir=gs://b/w --coordinator=localhost:9000 --num_processes=2 --process_id=1 >> /logs/rank_1.log 2>&1 &
      wait
  """)


@pytest.mark.parametrize("args, message", [
    (["--", "--config=c", "--workdir=w"], "--num_processes is required"),
    (["--num_processes", "0", "--", "--config=c", "--workdir=w"], "--num_processes must be a positive integer"),
    (["--num_processes", "2"], "no trainer arguments"),
    (["--num_processes", "2", "--", "--workdir=w"], "lack --config"),
    (["--num_processes", "2", "--", "--config=c"], "lack --workdir"),
    (["--num_processes", "2", "--", "--config=c", "--workdir=gs://b/w"], "pass --log_dir"),
    (["--num_processes", "2", "--", "--config=c", "--workdir=w", "--process_id=1"], "do not pass --process_id"),
    (["--num_processes", "2", "--platform", "tpu", "--", "--config=c", "--workdir=w"], "one process"),
    (["--num_processes", "4", "--platform", "gpu", "--devices_per_process", "2", "--",
      "--config=c", "--workdir=w"], "do not fit the 4 visible GPUs"),
    (["--num_processes", "2", "--bogus", "--", "--config=c", "--workdir=w"], "unknown option '--bogus'"),
    (["--num_processes"], "--num_processes needs a value"),
])
def test_local_bad_arguments_fail_with_a_message(args, message):
  proc = launch("local.sh", "--dry_run", *args, check=False,
                env={"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
  assert proc.returncode == 2
  assert message in proc.stderr and proc.stdout == ""


FAKE_TRAINER = """#!/usr/bin/env bash
# Stands in for python: rank $FAIL_RANK fails after a moment, the others wait to be stopped.
for arg in "$@"; do case $arg in --process_id=*) rank=${arg#*=} ;; esac; done
echo "rank $rank: $*"
if [[ $rank == "$FAIL_RANK" ]]; then sleep 1; echo "rank $rank fails"; exit 3; fi
trap 'echo "rank $rank stopped"; exit 143' TERM
sleep 30 & wait
echo "rank $rank was not stopped"
"""


def test_local_stops_all_ranks_when_one_fails(tmp_path):
  trainer = tmp_path / "fake_python"
  trainer.write_text(FAKE_TRAINER)
  trainer.chmod(0o755)
  workdir = tmp_path / "w"
  (workdir / "logs").mkdir(parents=True)
  (workdir / "logs" / "rank_0.log").write_text("earlier run\n")
  proc = launch("local.sh", "--num_processes", "3", "--platform", "cpu", "--python",
                str(trainer), "--", "--config=c", f"--workdir={workdir}", check=False,
                env={"FAIL_RANK": "1"}, timeout=25)
  assert proc.returncode == 3
  assert "rank 1 failed (exit code 3)" in proc.stderr
  logs = {i: (workdir / "logs" / f"rank_{i}.log").read_text() for i in range(3)}
  assert logs[0].startswith("earlier run\nrank 0: -m phd_jax.main --config=c")  # appended
  assert "--num_processes=3 --process_id=0" in logs[0]
  assert logs[1].endswith("rank 1 fails\n")
  for i in (0, 2):
    assert logs[i].endswith(f"rank {i} stopped\n")
  # rank 0's output of this run is shown, the earlier run's is not
  assert "rank 0: -m phd_jax.main" in proc.stdout and "earlier run" not in proc.stdout


def test_local_interrupt_stops_every_rank(tmp_path):
  trainer = tmp_path / "fake_python"
  trainer.write_text(FAKE_TRAINER)
  trainer.chmod(0o755)
  workdir = tmp_path / "w"
  env = {"PATH": os.environ["PATH"], "FAIL_RANK": "none"}
  # Start the launcher with SIGINT's default disposition, as from a terminal: a shell cannot
  # trap a signal that was ignored when it started, and test runners (pytest-xdist workers)
  # may ignore SIGINT. The child inherits the disposition at exec.
  previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
  try:
    proc = subprocess.Popen(
        [str(LAUNCH / "local.sh"), "--num_processes", "2", "--platform", "cpu", "--python",
         str(trainer), "--", "--config=c", f"--workdir={workdir}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  finally:
    signal.signal(signal.SIGINT, previous)
  log1 = workdir / "logs" / "rank_1.log"
  deadline = time.monotonic() + 120  # generous: CI machines are often loaded
  while not (log1.exists() and log1.read_text()):  # until rank 1 is up
    assert time.monotonic() < deadline and proc.poll() is None, "rank 1 never started"
    time.sleep(0.1)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130
  assert "interrupted, stopping all ranks" in stderr
  for i in (0, 1):
    assert (workdir / "logs" / f"rank_{i}.log").read_text().endswith(f"rank {i} stopped\n")


def test_local_passes_an_argument_with_a_newline_as_one_word(tmp_path):
  fake = tmp_path / "fake_python"  # writes its arguments, NUL-terminated
  fake.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$ARGS_OUT"\n')
  fake.chmod(0o755)
  args_out = tmp_path / "args"
  launch("local.sh", "--num_processes", "1", "--platform", "cpu", "--python", str(fake), "--",
         "--config=c", f"--workdir={tmp_path / 'w'}", "--config.note=two\nlines",
         env={"ARGS_OUT": str(args_out)})
  words = args_out.read_text().split("\0")[:-1]
  assert words[:5] == ["-m", "phd_jax.main", "--config=c", f"--workdir={tmp_path / 'w'}",
                       "--config.note=two\nlines"]


@pytest.mark.slow
def test_local_gpu_launch_warns_when_jax_sees_only_cpus(tmp_path):
  """The pre-flight check runs this repository's (CPU-only) JAX: a warning, not a refusal;
  the trainer still starts."""
  python = tmp_path / "python"  # the real interpreter for the check, a stand-in trainer
  python.write_text(f'#!/usr/bin/env bash\n[[ $1 == *check_accelerator.py ]] && '
                    f'exec {REPO_ROOT / ".venv" / "bin" / "python"} "$@"\necho trainer ran\n')
  python.chmod(0o755)
  proc = launch("local.sh", "--num_processes", "1", "--platform", "gpu", "--python",
                str(python), "--", "--config=c", f"--workdir={tmp_path / 'w'}",
                env={"CUDA_VISIBLE_DEVICES": "0"})
  assert "WARNING: this launch expects gpu devices, but the JAX of " in proc.stderr
  assert "finds cpu (1 devices): the run would train on CPU" in proc.stderr
  assert "pip install 'jax[cuda12]==" in proc.stderr
  assert "trainer ran" in (tmp_path / "w" / "logs" / "rank_0.log").read_text()


@pytest.mark.slow
def test_accelerator_check_is_silent_when_jax_finds_the_platform():
  python = str(REPO_ROOT / ".venv" / "bin" / "python")
  for platform, warns in (("cpu", False), ("tpu", True)):
    proc = subprocess.run([python, str(LAUNCH / "check_accelerator.py"), platform],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0 and proc.stdout == ""
    assert ("finds no libtpu (jax[tpu] missing)" in proc.stderr) == warns, proc.stderr


# ---------------------------------------------------------------- gpu_slurm.sh

def test_slurm_dry_run_outside_a_job_submits_itself():
  out = launch("gpu_slurm.sh", "--nodes", "2", "--per_gpu", "--sbatch_arg=--partition=h100",
               "--sbatch_arg", "--time=1:00:00", "--dry_run", "--",
               "--config=configs/olmo2_1b.py:PHD-CSWA-2-16-32", "--workdir=/shared/run").stdout
  assert out.splitlines() == [
      "mkdir -p /shared/run/logs",
      "sbatch --job-name=phd_jax --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --exclusive "
      "--open-mode=append --signal=TERM@180 --output=/shared/run/logs/slurm-%j.out --partition=h100 "
      f"--time=1:00:00 --export=ALL,PHD_JAX_LAUNCH_DIR={LAUNCH} {LAUNCH}/gpu_slurm.sh "
      "--gpus_per_node=8 --per_gpu -- --config=configs/olmo2_1b.py:PHD-CSWA-2-16-32 "
      "--workdir=/shared/run",
  ]


SLURM_JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[017-018,020],login1",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_ON_NODE": "96"}


def test_slurm_dry_run_in_a_job_one_process_per_node():
  out = launch("gpu_slurm.sh", "--dry_run", "--", "--config=configs/olmo2_1b.py",
               "--workdir=/shared/run", env=SLURM_JOB).stdout
  assert out.splitlines() == lines(f"""
      python3 {LAUNCH}/check_accelerator.py gpu
      mkdir -p /shared/run/logs
      export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true
      export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90
      export NCCL_DEBUG=WARN
      export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7
      srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=96 --kill-on-bad-exit=1 --open-mode=append --output=/shared/run/logs/rank_%t.log bash -c 'exec "$@" --process_id="$SLURM_PROCID"' bash python3 -m phd_jax.main --config=configs/olmo2_1b.py --workdir=/shared/run --coordinator=gpu017:24242 --num_processes=2
  """)


def test_slurm_dry_run_in_a_job_one_process_per_gpu_keeps_given_env():
  env = {**SLURM_JOB, "SLURM_JOB_NODELIST": "node7,node9", "SLURM_NTASKS_PER_NODE": "8(x2)",
         "XLA_FLAGS": "--xla_dump_to=/tmp/d", "NCCL_DEBUG": "INFO"}
  out = launch("gpu_slurm.sh", "--per_gpu", "--port", "1234", "--log_dir", "/l", "--dry_run",
               "--", "--config=c.py", "--workdir=w", env=env).stdout
  assert out.splitlines() == lines(f"""
      python3 {LAUNCH}/check_accelerator.py gpu
      mkdir -p /l
      export 'XLA_FLAGS=--xla_dump_to=/tmp/d --xla_gpu_enable_latency_hiding_scheduler=true'
      export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90
      export NCCL_DEBUG=INFO
      srun --nodes=2 --ntasks=16 --ntasks-per-node=8 --cpus-per-task=12 --kill-on-bad-exit=1 --open-mode=append --output=/l/rank_%t.log bash -c 'exec "$@" --process_id="$SLURM_PROCID"' bash python3 -m phd_jax.main --config=c.py --workdir=w --coordinator=node7:1234 --num_processes=16
  """)


def test_slurm_evaluator_is_a_one_process_job_of_its_own():
  """Outside a job: a small job submitted through --wrap (the script's #SBATCH lines ask for
  whole nodes); inside it: one process following the run."""
  out = launch("gpu_slurm.sh", "--evaluator", "--sbatch_arg=--partition=h100", "--dry_run",
               "--", "--workdir=/shared/run", "--tasks=all", "--data_dir=/shared/eval data").stdout
  assert out.splitlines() == [
      "mkdir -p /shared/run/logs",
      "sbatch --job-name=phd_jax_eval --nodes=1 --ntasks-per-node=1 --gpus-per-node=1 "
      "--open-mode=append --signal=TERM@180 --output=/shared/run/logs/evaluator-%j.out "
      f"--partition=h100 '--wrap={LAUNCH}/gpu_slurm.sh --gpus_per_node=1 --evaluator -- "
      "--workdir=/shared/run --tasks=all '\"'\"'--data_dir=/shared/eval data'\"'\"''",
  ]
  wrapped = shlex.split(shlex.split(out.splitlines()[1])[-1].removeprefix("--wrap="))
  assert wrapped[-1] == "--data_dir=/shared/eval data"  # one word in the job's shell
  job = {**SLURM_JOB, "SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_ON_NODE": "1",
         "SLURM_JOB_NODELIST": "gpu017"}
  out = launch("gpu_slurm.sh", "--gpus_per_node=1", "--evaluator", "--dry_run", "--",
               "--workdir=/shared/run", "--tasks=loss", env=job).stdout
  assert out.splitlines() == lines(f"""
      python3 {LAUNCH}/check_accelerator.py gpu
      mkdir -p /shared/run/logs
      export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true
      export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90
      export NCCL_DEBUG=WARN
      export JAX_LOCAL_DEVICE_IDS=0
      srun --nodes=1 --ntasks=1 --cpus-per-task=96 --open-mode=append --output=/shared/run/logs/evaluator.log python3 -m phd_jax.evaluate --workdir=/shared/run --tasks=loss --follow
  """)


@pytest.mark.parametrize("found_by", ["PHD_JAX_LAUNCH_DIR", "SLURM_SUBMIT_DIR"])
def test_slurm_copy_in_the_spool_directory_finds_the_repository(tmp_path, found_by):
  """sbatch runs a copy of the script from elsewhere: it finds launch/ through the
  variable its own submission exports, or the directory sbatch was called from."""
  spool_copy = tmp_path / "slurm_script"
  spool_copy.write_text((LAUNCH / "gpu_slurm.sh").read_text())
  spool_copy.chmod(0o755)
  env = {"PATH": os.environ["PATH"], "PYTHON": "python3", **SLURM_JOB,
         found_by: str(LAUNCH if found_by == "PHD_JAX_LAUNCH_DIR" else REPO_ROOT)}
  proc = subprocess.run([str(spool_copy), "--dry_run", "--", "--config=c.py", "--workdir=w"],
                        env=env, capture_output=True, text=True, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines()[-1].endswith(
      "python3 -m phd_jax.main --config=c.py --workdir=w --coordinator=gpu017:24242 "
      "--num_processes=2")


@pytest.mark.parametrize("args, env, message", [
    (["--per_gpu"], {**SLURM_JOB, "SLURM_NTASKS_PER_NODE": "1"}, "--ntasks-per-node=1 but this run needs 8"),
    (["--gpus_per_node", "4"], SLURM_JOB, "--gpus_per_node=4 but the job has 8 GPUs"),
    (["--sbatch_arg", "--requeue"], SLURM_JOB, "only applies when submitting"),
    (["--nodes", "two"], {}, "--nodes must be a positive integer"),
    (["--evaluator", "--per_gpu"], {}, "--per_gpu does not apply to --evaluator"),
    (["--evaluator", "--nodes", "2"], {}, "--evaluator runs on one node; got --nodes 2"),
])
def test_slurm_bad_arguments_fail_with_a_message(args, env, message):
  proc = launch("gpu_slurm.sh", *args, "--dry_run", "--", "--config=c", "--workdir=w",
                env=env, check=False)
  assert proc.returncode == 2
  assert message in proc.stderr


@pytest.mark.parametrize("script, args", [
    ("gpu_slurm.sh", ["--evaluator"]),
    ("tpu_pod.sh", ["--name=e", "--zone=z", "--accelerator_type=v5litepod-8", "--evaluator"]),
    ("tpu_worker.sh", ["start", "--evaluator"]),
])
@pytest.mark.parametrize("evaluator_args, message", [
    (["--tasks=loss"], "the evaluator arguments lack --workdir=RUN, the run to follow"),
    (["--workdir=gs://b/w", "--checkpoint=gs://b/w/checkpoints/4"],
     "do not pass --checkpoint to the evaluator: it follows --workdir in one process"),
    (["--workdir=gs://b/w", "--num_processes", "2"],
     "do not pass --num_processes to the evaluator: it follows --workdir in one process"),
])
def test_evaluator_arguments_are_checked_before_anything_starts(script, args, evaluator_args,
                                                                message):
  proc = launch(script, *args, "--dry_run", "--", *evaluator_args, check=False)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr == f"{script}: error: {message}\n"


# ---------------------------------------------------------------- tpu_pod.sh

def test_tpu_dry_run_copies_the_tree_and_starts_every_worker():
  out = launch("tpu_pod.sh", "--name", "phd-v5p", "--zone=us-east5-a", "--project", "lab",
               "--accelerator_type", "v5p-64", "--spot", "--env", "LIBTPU_INIT_ARGS=--a=1 --b=2",
               "--dry_run", "--", "--config=configs/olmo2_1b.py:PHD-CSWA-2-16-32",
               "--workdir=gs://bucket/runs/1b").stdout
  at = "phd-v5p --zone=us-east5-a --project=lab"
  worker = "bash phd_jax/launch/tpu_worker.sh"
  assert out.splitlines() == [
      "# unless phd-v5p is already READY (a preempted or failed one is deleted first):",
      f"gcloud compute tpus tpu-vm create {at} --accelerator-type=v5p-64 "
      "--version=v2-alpha-tpuv5 --spot",
      f"git -C {REPO_ROOT} ls-files -z --cached --others --exclude-standard | "
      f"tar -C {REPO_ROOT} --null --ignore-failed-read -T - -czf /tmp/phd_jax-phd-v5p.tar.gz",
      "gcloud compute tpus tpu-vm scp /tmp/phd_jax-phd-v5p.tar.gz phd-v5p:phd_jax.tar.gz "
      "--zone=us-east5-a --project=lab --worker=all",
      f"gcloud compute tpus tpu-vm ssh {at} --worker=all '--command=if [ -f "
      f"phd_jax/launch/tpu_worker.sh ]; then {worker} stop; fi; rm -rf phd_jax && mkdir "
      f"phd_jax && tar -xzf phd_jax.tar.gz -C phd_jax && {worker} install --python_version 3.11'",
      f"gcloud compute tpus tpu-vm ssh {at} --worker=all '--command={worker} start --env "
      "'\"'\"'LIBTPU_INIT_ARGS=--a=1 --b=2'\"'\"' -- "
      "--config=configs/olmo2_1b.py:PHD-CSWA-2-16-32 --workdir=gs://bucket/runs/1b'",
      f"gcloud compute tpus tpu-vm ssh {at} --worker=0 '--command={worker} logs'",
  ]
  # what each worker's shell receives: the --env value stays one word
  start = shlex.split(out.splitlines()[5])[-1].removeprefix("--command=")
  assert shlex.split(start)[4] == "LIBTPU_INIT_ARGS=--a=1 --b=2"


def test_tpu_dry_run_queued_resource_with_git_clone():
  out = launch("tpu_pod.sh", "--name=q", "--zone=us-central2-b", "--accelerator_type=v4-32",
               "--queued", "--git_url", "https://example.org/phd_jax.git", "--git_ref", "v0.1",
               "--python_version", "3.12", "--dry_run", "--", "--config=configs/tiny.py",
               "--workdir=gs://b/tiny").stdout
  worker = "bash phd_jax/launch/tpu_worker.sh"
  assert out.splitlines() == [
      "# unless q is already ACTIVE (a preempted or failed one is deleted first):",
      "gcloud compute tpus queued-resources create q --zone=us-central2-b --node-id=q "
      "--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base",
      f"gcloud compute tpus tpu-vm ssh q --zone=us-central2-b --worker=all '--command=if [ -f "
      f"phd_jax/launch/tpu_worker.sh ]; then {worker} stop; fi; rm -rf phd_jax && git clone -q "
      "https://example.org/phd_jax.git phd_jax && git -C phd_jax checkout -q v0.1 && "
      f"{worker} install --python_version 3.12'",
      f"gcloud compute tpus tpu-vm ssh q --zone=us-central2-b --worker=all '--command={worker} "
      "start -- --config=configs/tiny.py --workdir=gs://b/tiny'",
      f"gcloud compute tpus tpu-vm ssh q --zone=us-central2-b --worker=0 '--command={worker} logs'",
  ]


@pytest.mark.parametrize("action, expected", [
    (["--teardown"], "gcloud compute tpus tpu-vm delete t --zone=z --quiet"),
    (["--queued", "--teardown"], "gcloud compute tpus queued-resources delete t --zone=z --force --quiet"),
    (["--logs"], "gcloud compute tpus tpu-vm ssh t --zone=z --worker=0 "
                 "'--command=bash phd_jax/launch/tpu_worker.sh logs'"),
    (["--stop"], "gcloud compute tpus tpu-vm ssh t --zone=z --worker=all '--command=if [ -f "
                 "phd_jax/launch/tpu_worker.sh ]; then bash phd_jax/launch/tpu_worker.sh stop; fi'"),
])
def test_tpu_dry_run_actions(action, expected):
  out = launch("tpu_pod.sh", "--name", "t", "--zone", "z", *action, "--dry_run").stdout
  assert out == expected + "\n"


@pytest.mark.parametrize("args, message", [
    (["--zone", "z", "--accelerator_type", "v4-8"], "--name is required"),
    (["--name", "t", "--accelerator_type", "v4-8"], "--zone is required"),
    (["--name", "t", "--zone", "z"], "--accelerator_type is required"),
    (["--name", "t", "--zone", "z", "--accelerator_type", "v9-8"], "pass --runtime_version"),
    (["--name", "t", "--zone", "z", "--logs", "--stop"], "choose one of"),
    (["--name", "t", "--zone", "z", "--git_ref", "main", "--accelerator_type", "v4-8"], "--git_ref needs --git_url"),
])
def test_tpu_bad_arguments_fail_with_a_message(args, message):
  proc = launch("tpu_pod.sh", *args, "--dry_run", "--", "--config=c", "--workdir=gs://b/w",
                check=False)
  assert proc.returncode == 2
  assert message in proc.stderr


def test_tpu_dry_run_starts_the_evaluator_on_a_vm_of_its_own():
  out = launch("tpu_pod.sh", "--name", "phd-1b-eval", "--zone=us-east5-a", "--accelerator_type",
               "v5litepod-8", "--evaluator", "--dry_run", "--", "--workdir=gs://bucket/runs/1b",
               "--tasks=all", "--data_dir=/home/me/eval_data").stdout.splitlines()
  worker = "bash phd_jax/launch/tpu_worker.sh"
  at = "phd-1b-eval --zone=us-east5-a"
  assert out[1] == (f"gcloud compute tpus tpu-vm create {at} --accelerator-type=v5litepod-8 "
                    "--version=v2-alpha-tpuv5-lite")
  assert out[-2:] == [
      f"gcloud compute tpus tpu-vm ssh {at} --worker=all '--command={worker} start --evaluator "
      "-- --workdir=gs://bucket/runs/1b --tasks=all --data_dir=/home/me/eval_data'",
      f"gcloud compute tpus tpu-vm ssh {at} --worker=0 '--command={worker} logs'"]


def test_tpu_workdir_must_be_shared():
  proc = launch("tpu_pod.sh", "--name", "t", "--zone", "z", "--accelerator_type", "v4-8",
                "--dry_run", "--", "--config=c", "--workdir=/local/w", check=False)
  assert proc.returncode == 2 and "gs:// path that every worker shares" in proc.stderr


# ---------------------------------------------------------------- tpu_worker.sh

def test_tpu_worker_starts_follows_and_stops_a_detached_run(tmp_path):
  """On a worker: `start` detaches the trainer, `logs` follows it and returns its exit
  status, a second `start` stops the first run and keeps its log as log.prev."""
  python = tmp_path / "phd_jax_venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text('#!/usr/bin/env bash\necho "run $RUN_NAME: $*"\nsleep "$RUN_SECONDS"\n'
                    'exit "$RUN_STATUS"\n')
  python.chmod(0o755)
  env = {"HOME": str(tmp_path)}
  run_dir = tmp_path / "phd_jax_run"

  launch("tpu_worker.sh", "start", "--env", "RUN_NAME=first", "--env", "RUN_SECONDS=30",
         "--env", "RUN_STATUS=0", "--", "--config=c", "--workdir=gs://b/w", env=env)
  group = int((run_dir / "pid").read_text())
  os.kill(group, 0)  # running, detached from this call
  deadline = time.monotonic() + 20  # under load the detached run may not have printed yet
  while not (run_dir / "log").read_text() and time.monotonic() < deadline:
    time.sleep(0.1)
  launch("tpu_worker.sh", "start", "--env", "RUN_NAME=second", "--env", "RUN_SECONDS=1",
         "--env", "RUN_STATUS=5", "--", "--config=c", "--workdir=gs://b/w", env=env)
  with pytest.raises(ProcessLookupError):
    os.killpg(group, 0)  # the first run's whole process group is gone
  follow = launch("tpu_worker.sh", "logs", env=env, check=False, timeout=20)
  assert follow.returncode == 5
  assert follow.stdout == "run second: -m phd_jax.main --config=c --workdir=gs://b/w\n"
  assert (run_dir / "log.prev").read_text().startswith("run first: -m phd_jax.main")
  assert not (run_dir / "pid").exists()  # the finished run removed it; stop is a no-op
  launch("tpu_worker.sh", "stop", env=env)



def test_tpu_worker_starts_the_evaluator_job(tmp_path):
  python = tmp_path / "phd_jax_venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text('#!/usr/bin/env bash\necho "ran: $*"\n')
  python.chmod(0o755)
  env = {"HOME": str(tmp_path)}
  started = launch("tpu_worker.sh", "start", "--evaluator", "--", "--workdir=gs://b/w",
                   "--tasks=loss", env=env).stdout
  assert started.splitlines()[-1].startswith("started phd_jax.evaluate on ")
  follow = launch("tpu_worker.sh", "logs", env=env, timeout=20)
  assert follow.stdout == "ran: -m phd_jax.evaluate --workdir=gs://b/w --tasks=loss --follow\n"
