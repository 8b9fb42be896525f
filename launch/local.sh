#!/usr/bin/env bash
# Multi-process training on one machine: CPUs, GPUs, or a single-host TPU VM.
set -euo pipefail

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
source "$LAUNCH_DIR/common.sh"

usage() {
  cat <<EOF
Usage: launch/local.sh --num_processes N [options] -- <phd_jax.main arguments>

Starts N processes of
  python -m phd_jax.main <arguments> --coordinator=localhost:PORT --num_processes=N --process_id=i
on this machine, each with its own devices, waits for all of them, and fails (stopping
the others) as soon as one fails. Rank 0's output is also shown here; every rank logs to
<workdir>/logs/rank_<i>.log (appended, so the logs of a resumed run follow the old ones).
On GPUs and TPUs it first warns when the interpreter's JAX finds no such devices
(launch/check_accelerator.py), e.g. with the CPU-only jax that \`make install\` sets up.

Options:
  --num_processes N        processes to start (required)
  --devices_per_process M  CPU: M fake devices per process (XLA_FLAGS
                           --xla_force_host_platform_device_count; default: as the
                           environment has it, else 1). GPU: M GPUs per process (default:
                           all visible GPUs split evenly), given to each process through
                           JAX_LOCAL_DEVICE_IDS. TPU: one process owns the host (N = 1).
  --platform P             cpu | gpu | tpu (default: from JAX_PLATFORMS, else gpu when
                           nvidia-smi lists GPUs, tpu when /dev/accel0 or /dev/vfio/0 exists,
                           else cpu)
  --port P                 coordinator port (default: a free port)
  --python PY              interpreter (default: \$PYTHON, else .venv/bin/python of this
                           repository, else python3)
  --log_dir DIR            per-rank logs (default: <workdir>/logs; needed when the workdir
                           is not a local path, e.g. gs://)
  --dry_run                print the commands instead of running them
  --help                   this text

Example (2 processes x 4 CPU devices = an 8-device mesh):
  launch/local.sh --num_processes 2 --devices_per_process 4 -- \\
      --config=configs/tiny.py --workdir=workdirs/tiny_2proc
EOF
}

declare -A OPTIONS=([num_processes]=value [devices_per_process]=value [platform]=value
                    [port]=value [python]=value [log_dir]=value)
num_processes="" devices_per_process="" platform="" port="" python="" log_dir=""
parse_args "$@"

[[ -n $num_processes ]] || die "--num_processes is required (see --help)"
need_uint --num_processes "$num_processes"
[[ -z $devices_per_process ]] || need_uint --devices_per_process "$devices_per_process"
[[ -z $port ]] || need_uint --port "$port"
check_trainer_args "${TRAINER_ARGS[@]}"

if [[ -z $platform ]]; then
  if [[ -n ${JAX_PLATFORMS:-} ]]; then
    platform=${JAX_PLATFORMS%%,*}
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    platform=gpu
  elif [[ -e /dev/accel0 || -e /dev/vfio/0 ]]; then  # TPU chips: v4 and older, v5e and newer
    platform=tpu
  else
    platform=cpu
  fi
fi
[[ $platform == cuda ]] && platform=gpu

case $platform in
  cpu)
    if [[ -n $devices_per_process ]]; then
      xla_flags=""
      for flag in ${XLA_FLAGS:-}; do  # drop an inherited device count, keep other flags
        [[ $flag == --xla_force_host_platform_device_count=* ]] || xla_flags+="$flag "
      done
      xla_flags+="--xla_force_host_platform_device_count=$devices_per_process"
    fi
    ;;
  gpu)
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
      IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
      num_gpus=${#visible[@]}
    else
      need_tool nvidia-smi "to count the GPUs (or set CUDA_VISIBLE_DEVICES)"
      num_gpus=$(nvidia-smi -L | grep -c '^GPU')
    fi
    devices_per_process=${devices_per_process:-$((num_gpus / num_processes))}
    if ((devices_per_process < 1 || devices_per_process * num_processes > num_gpus)); then
      die "$num_processes processes x $devices_per_process GPUs do not fit the $num_gpus visible GPUs"
    fi
    ;;
  tpu)
    ((num_processes == 1)) || die "a TPU host runs one process (--num_processes 1); use launch/tpu_pod.sh for several hosts"
    [[ -z $devices_per_process ]] || die "--devices_per_process does not apply to TPUs"
    ;;
  *) die "--platform must be cpu, gpu or tpu; got '$platform'" ;;
esac

python=${python:-$(default_python "$(dirname "$LAUNCH_DIR")")}
[[ $platform == cpu ]] || check_accelerator "$python" "$platform"
workdir=$(trainer_flag workdir "${TRAINER_ARGS[@]}")
log_dir=$(default_log_dir "$log_dir" "$workdir")
# A port below Linux's ephemeral range on which nothing listens.
if [[ -z $port ]]; then
  for _ in {1..100}; do
    port=$((20000 + RANDOM % 12000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
  done
fi

# The environment (KEY=VALUE words) and the command line of rank $1, NUL-terminated words
# (an argument may hold a newline).
rank_env() {
  local rank=$1
  case $platform in
    cpu) printf '%s\0' JAX_PLATFORMS=cpu
         [[ -z ${xla_flags:-} ]] || printf '%s\0' "XLA_FLAGS=$xla_flags" ;;
    gpu) local first=$((rank * devices_per_process))
         printf 'JAX_LOCAL_DEVICE_IDS=%s\0' "$(seq -s , "$first" $((first + devices_per_process - 1)))" ;;
  esac
}
rank_cmd() {
  local rank=$1
  printf '%s\0' "$python" -m phd_jax.main "${TRAINER_ARGS[@]}" \
      "--coordinator=localhost:$port" "--num_processes=$num_processes" "--process_id=$rank"
}

run mkdir -p "$log_dir"
pids=()
# Each rank runs in its own session (setsid), so a signal to its process group also
# reaches the data workers it forked.
# SIGTERM lets the trainer stop at a step all ranks agree on; what is still alive after
# $1 seconds gets SIGKILL.
stop_ranks() {
  local grace=$1 pid alive tick
  for pid in "${pids[@]}"; do [[ -z $pid ]] || kill -TERM -- "-$pid" 2>/dev/null || true; done
  for ((tick = 0; tick < grace * 2; tick++)); do
    alive=0
    for pid in "${pids[@]}"; do [[ -z $pid ]] || ! kill -0 -- "-$pid" 2>/dev/null || alive=1; done
    ((alive)) || return 0
    sleep 0.5
  done
  for pid in "${pids[@]}"; do [[ -z $pid ]] || kill -KILL -- "-$pid" 2>/dev/null || true; done
}
if ((!DRY_RUN)); then
  trap 'stop_ranks 0' EXIT
  trap 'echo "$PROG: interrupted, stopping all ranks" >&2; stop_ranks 60; exit 130' INT TERM
fi

log0=$log_dir/rank_0.log
offset0=$(($(stat -c %s "$log0" 2>/dev/null || echo 0) + 1))  # where this run's output starts
for ((rank = 0; rank < num_processes; rank++)); do
  mapfile -d '' -t proc_env < <(rank_env "$rank")
  mapfile -d '' -t cmd < <(rank_cmd "$rank")
  log=$log_dir/rank_$rank.log
  line="$(quote_words setsid env "${proc_env[@]}" "${cmd[@]}") >> $(quote "$log") 2>&1 &"
  if ((DRY_RUN)); then
    echo "$line"
    continue
  fi
  echo "+ $line" >&2
  setsid env "${proc_env[@]}" "${cmd[@]}" >>"$log" 2>&1 &
  pids+=("$!")
done
if ((DRY_RUN)); then
  echo wait
  exit 0
fi

# Show rank 0's output of this run as it comes (tail stops once rank 0 has exited).
tail -c "+$offset0" -f --pid="${pids[0]}" "$log0" &
tail_pid=$!

status=0
remaining=$num_processes
while ((remaining > 0)); do
  for rank in "${!pids[@]}"; do
    pid=${pids[rank]}
    if [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null; then continue; fi
    rc=0
    wait "$pid" || rc=$?
    pids[rank]=""
    remaining=$((remaining - 1))
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "$PROG: rank $rank failed (exit code $rc); stopping the others. Its log ends with:" >&2
      tail -n 20 "$log_dir/rank_$rank.log" >&2
      stop_ranks 5  # the others wait in collectives for the failed rank
    fi
  done
  ((remaining == 0)) || sleep 0.5
done
wait "$tail_pid" || true
if ((status != 0)); then
  echo "$PROG: failed; logs in $log_dir" >&2
fi
exit "$status"
