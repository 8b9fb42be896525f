#!/usr/bin/env bash
# Multi-node GPU training under SLURM (or, with --evaluator, the evaluator job of a run).
# Outside a job this script submits itself with sbatch; inside one (sbatch or salloc) it
# starts the processes with srun.
#SBATCH --job-name=phd_jax
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --signal=TERM@180
set -euo pipefail

# sbatch runs a copy of this script from its spool directory: find the repository
# through the submission (see PHD_JAX_LAUNCH_DIR below) or the submit directory.
for LAUNCH_DIR in "$(dirname "${BASH_SOURCE[0]}")" "${PHD_JAX_LAUNCH_DIR:-}" \
    "${SLURM_SUBMIT_DIR:-.}/launch"; do
  [[ -f $LAUNCH_DIR/common.sh ]] && break
done
[[ -f $LAUNCH_DIR/common.sh ]] || {
  echo "gpu_slurm.sh: error: cannot find launch/common.sh; submit from the repository root" >&2
  exit 2
}
LAUNCH_DIR=$(cd "$LAUNCH_DIR" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
source "$LAUNCH_DIR/common.sh"

usage() {
  cat <<EOF
Usage: launch/gpu_slurm.sh [options] -- <phd_jax.main arguments>
       sbatch [sbatch options] launch/gpu_slurm.sh [options] -- <phd_jax.main arguments>
       launch/gpu_slurm.sh --evaluator [options] -- <phd_jax.evaluate arguments>

Outside a SLURM job, submits itself with sbatch (asking for --nodes x --gpus_per_node
GPUs, whole nodes). Inside a job, runs with srun, on every node, either one process
owning all the node's GPUs (default) or one process per GPU (--per_gpu):
  python -m phd_jax.main <arguments> --coordinator=<first node>:PORT
      --num_processes=<nodes x processes per node> --process_id=\$SLURM_PROCID
Rank i logs to <workdir>/logs/rank_<i>.log (appended across requeues), the job itself
to <workdir>/logs/slurm-<job id>.out. SLURM sends SIGTERM 180 s before the time limit,
so the trainer stops at a step boundary; rerunning the command resumes from the workdir.
Before srun it warns (in the job's log) when the interpreter's JAX finds no GPUs.

With --evaluator, the job is the evaluator of a run instead, submitted beside its
training job: one process on one node (--gpus_per_node GPUs, default 1, not exclusive),
  python -m phd_jax.evaluate <arguments> --follow
logging to <workdir>/logs/evaluator.log (the job to evaluator-<job id>.out); it
evaluates each checkpoint the run commits and ends after the run's final step.

Options:
  --nodes N            nodes (default: the job's nodes inside a job, else 1)
  --gpus_per_node G    GPUs per node (default: SLURM_GPUS_ON_NODE inside a job, else 8;
                       1 for --evaluator)
  --per_gpu            one process per GPU instead of one per node
  --evaluator          the evaluator job of the --workdir run, not training
  --sbatch_arg ARG     extra sbatch option, repeatable, e.g. --sbatch_arg=--partition=h100
                       --sbatch_arg=--time=2-00:00:00 --sbatch_arg=--requeue
  --log_dir DIR        logs (default: <workdir>/logs)
  --port P             coordinator port (default: 20000 + job id % 10000)
  --python PY          interpreter (default: \$PYTHON, else .venv/bin/python of this
                       repository, else python3)
  --dry_run            print the commands instead of running them
  --help               this text

Environment set for the processes unless already set (see the comments in this script):
  XLA_FLAGS += --xla_gpu_enable_latency_hiding_scheduler=true
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.90, NCCL_DEBUG=WARN
  JAX_LOCAL_DEVICE_IDS=0,...,G-1 (one process per node only)

Example (2 nodes x 8 H100):
  launch/gpu_slurm.sh --nodes 2 --sbatch_arg=--partition=h100 -- \\
      --config=configs/olmo2_1b.py:PHD-CSWA-2-16-32 --workdir=/shared/runs/phd_1b
EOF
}

declare -A OPTIONS=([nodes]=value [gpus_per_node]=value [per_gpu]=flag [sbatch_arg]=list
                    [log_dir]=value [port]=value [python]=value [evaluator]=flag)
nodes="" gpus_per_node="" per_gpu=0 sbatch_arg=() log_dir="" port="" python="" evaluator=0
parse_args "$@"
# The options the job's own run of this script needs.
forward=()
((per_gpu)) && forward+=(--per_gpu)
[[ -z $log_dir ]] || forward+=(--log_dir "$log_dir")
[[ -z $port ]] || forward+=(--port "$port")
[[ -z $python ]] || forward+=(--python "$python")
if ((evaluator)); then
  forward+=(--evaluator)
  check_evaluator_args "${TRAINER_ARGS[@]}"
  ((!per_gpu)) || die "--per_gpu does not apply to --evaluator: it runs one process"
  [[ -z $nodes || $nodes == 1 ]] || die "--evaluator runs on one node; got --nodes $nodes"
else
  check_trainer_args "${TRAINER_ARGS[@]}"
fi
[[ -z $nodes ]] || need_uint --nodes "$nodes"
[[ -z $gpus_per_node ]] || need_uint --gpus_per_node "$gpus_per_node"
[[ -z $port ]] || need_uint --port "$port"

workdir=$(trainer_flag workdir "${TRAINER_ARGS[@]}")
log_dir=$(default_log_dir "$log_dir" "$workdir")

# ---- Outside a job: submit this script. ----
if [[ -z ${SLURM_JOB_ID:-} ]]; then
  if ((evaluator)); then  # a small job beside the training job, sharing its nodes
    gpus_per_node=${gpus_per_node:-1}
    job=(--job-name=phd_jax_eval --nodes=1 --ntasks-per-node=1 "--gpus-per-node=$gpus_per_node")
    job_log=$log_dir/evaluator-%j.out
  else
    gpus_per_node=${gpus_per_node:-8}
    job=(--job-name=phd_jax "--nodes=${nodes:-1}" "--ntasks-per-node=$((per_gpu ? gpus_per_node : 1))"
         "--gpus-per-node=$gpus_per_node" --exclusive)
    job_log=$log_dir/slurm-%j.out
  fi
  command=("$LAUNCH_DIR/gpu_slurm.sh" "--gpus_per_node=$gpus_per_node" "${forward[@]}" --
           "${TRAINER_ARGS[@]}")
  if ((evaluator)); then  # a job script of its own: this one's #SBATCH lines take whole nodes
    submit=("--wrap=$(quote_words "${command[@]}")")
  else
    submit=("--export=ALL,PHD_JAX_LAUNCH_DIR=$LAUNCH_DIR" "${command[@]}")
  fi
  ((DRY_RUN)) || need_tool sbatch "to submit the job (or run this inside salloc)"
  run mkdir -p "$log_dir"
  run sbatch "${job[@]}" --open-mode=append --signal=TERM@180 "--output=$job_log" \
      "${sbatch_arg[@]}" "${submit[@]}"
  exit 0
fi

# ---- Inside a job: one srun step over the nodes. ----
((${#sbatch_arg[@]} == 0)) || die "--sbatch_arg only applies when submitting (outside a job)"
nodes=${nodes:-${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}}
[[ -n $nodes ]] || die "SLURM_JOB_NUM_NODES is not set: pass --nodes"
gpus_per_node=${gpus_per_node:-${SLURM_GPUS_ON_NODE:-}}
[[ -n $gpus_per_node ]] || die "SLURM_GPUS_ON_NODE is not set (no GPUs allocated?): pass --gpus_per_node"
if [[ -n ${SLURM_GPUS_ON_NODE:-} && $SLURM_GPUS_ON_NODE != "$gpus_per_node" ]]; then
  die "--gpus_per_node=$gpus_per_node but the job has $SLURM_GPUS_ON_NODE GPUs per node"
fi
tasks_per_node=$((per_gpu ? gpus_per_node : 1))
if [[ -n ${SLURM_NTASKS_PER_NODE:-} && ${SLURM_NTASKS_PER_NODE%%(*} != "$tasks_per_node" ]]; then
  die "the job has --ntasks-per-node=$SLURM_NTASKS_PER_NODE but this run needs $tasks_per_node" \
      "(one per GPU needs --per_gpu and --ntasks-per-node=GPUs, one per node needs 1)"
fi
num_processes=$((nodes * tasks_per_node))

# Process 0 runs on the job's first node: the first name of the compact node list
# ("gpu[017-018,020],x" -> "gpu017").
node_list=${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}
prefix=${node_list%%[[,]*}
if [[ ${node_list:${#prefix}:1} == "[" ]]; then
  ranges=${node_list:${#prefix}+1}
  first_node=$prefix${ranges%%[],-]*}
else
  first_node=$prefix
fi
port=${port:-$((20000 + SLURM_JOB_ID % 10000))}
python=${python:-$(default_python "$(dirname "$LAUNCH_DIR")")}

# Environment of the processes (srun passes it on). Defaults only: a value set before
# submitting wins.
# - The latency hiding scheduler lets XLA overlap collectives (FSDP all-gathers and
#   reduce-scatters) with compute.
# - XLA preallocates this share of GPU memory (JAX's default is 0.75).
# - NCCL_DEBUG=INFO prints the topology NCCL found (NVLink, InfiniBand) when debugging;
#   NCCL_SOCKET_IFNAME / NCCL_IB_HCA pick the network interfaces on clusters where NCCL's
#   own choice is wrong; set them before submitting.
# - JAX's SLURM detection gives each process only GPU $SLURM_LOCALID (right for
#   --per_gpu); one process per node must own all its GPUs, so list them.
xla_flags=${XLA_FLAGS:-}
[[ $xla_flags == *xla_gpu_enable_latency_hiding_scheduler* ]] ||
  xla_flags="${xla_flags:+$xla_flags }--xla_gpu_enable_latency_hiding_scheduler=true"
exports=("XLA_FLAGS=$xla_flags"
         "XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
         "NCCL_DEBUG=${NCCL_DEBUG:-WARN}")
((per_gpu)) || exports+=("JAX_LOCAL_DEVICE_IDS=$(seq -s , 0 $((gpus_per_node - 1)))")

# Give each process its share of the node's CPUs (srun would bind each task to one).
cpus=()
[[ -z ${SLURM_CPUS_ON_NODE:-} ]] || cpus=("--cpus-per-task=$((SLURM_CPUS_ON_NODE / tasks_per_node))")

((DRY_RUN)) || need_tool srun "to start the processes"
check_accelerator "$python" gpu  # on the job's first node, before the step starts
run mkdir -p "$log_dir"
for assignment in "${exports[@]}"; do
  run export "$assignment"
done
if ((evaluator)); then
  run srun --nodes=1 --ntasks=1 "${cpus[@]}" --open-mode=append "--output=$log_dir/evaluator.log" \
      "$python" -m phd_jax.evaluate "${TRAINER_ARGS[@]}" --follow
  exit 0
fi
# Every task appends to its own log; --kill-on-bad-exit ends the step when one fails.
# The process id is SLURM's rank of the task, read inside the task.
# shellcheck disable=SC2016
run srun "--nodes=$nodes" "--ntasks=$num_processes" "--ntasks-per-node=$tasks_per_node" \
    "${cpus[@]}" --kill-on-bad-exit=1 --open-mode=append "--output=$log_dir/rank_%t.log" \
    bash -c 'exec "$@" --process_id="$SLURM_PROCID"' bash \
    "$python" -m phd_jax.main "${TRAINER_ARGS[@]}" \
    "--coordinator=$first_node:$port" "--num_processes=$num_processes"
