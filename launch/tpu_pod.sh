#!/usr/bin/env bash
# Training on a Cloud TPU VM slice (one host or a pod): create or reuse the TPU, ship the
# code, install the pinned stack, start every worker at once, follow worker 0's log. With
# --evaluator, the same for the evaluator job of a run, on a small TPU VM of its own.
set -euo pipefail

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
source "$LAUNCH_DIR/common.sh"
ROOT=$(dirname "$LAUNCH_DIR")
REMOTE_DIR=phd_jax  # the code on each worker, relative to the ssh user's home

usage() {
  cat <<EOF
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator_type TYPE [options] \\
           -- <phd_jax.main arguments, with --workdir=gs://...>
       launch/tpu_pod.sh --name NAME --zone ZONE --accelerator_type TYPE --evaluator \\
           [options] -- <phd_jax.evaluate arguments, with --workdir=gs://...>
       launch/tpu_pod.sh --name NAME --zone ZONE [--queued] --logs | --stop | --teardown

Creates the TPU VM NAME (or reuses it when READY; recreates it when preempted), copies
this working tree (tracked and untracked files that git does not ignore) to every worker,
installs requirements.txt plus jax[tpu] at the pinned jax version, starts
  python -m phd_jax.main <arguments>
on all workers at once (jax.distributed.initialize finds the other hosts itself), and
follows worker 0's log. Ctrl-C stops the following, not the run. Running the same
command again (after a preemption, say) resumes from the checkpoints in the workdir.

With --evaluator it starts the evaluator job instead, on a TPU VM of its own (its own
--name; one host, e.g. v5litepod-8 or v4-8):
  python -m phd_jax.evaluate <arguments> --follow
which evaluates each checkpoint the run commits to the workdir, writes only under
<workdir>/eval/ and ends after the run's final step (--logs, --stop and --teardown with
its --name work as for training). Its --data_dir must exist on that VM.

Options:
  --name NAME              TPU VM (and queued resource) name (required)
  --zone ZONE              zone, e.g. us-east5-a (required)
  --project PROJECT        project (default: gcloud's configured project)
  --accelerator_type TYPE  e.g. v4-32, v5litepod-16, v5p-64, v6e-64 (required to run)
  --runtime_version V      TPU software version (default by generation:
                           v6e: v2-alpha-tpuv6e, v5p: v2-alpha-tpuv5,
                           v5e: v2-alpha-tpuv5-lite, v4 and older: tpu-ubuntu2204-base)
  --queued                 request the TPU through a queued resource and wait for it
  --spot                   spot capacity (cheaper, preemptible)
  --git_url URL            clone URL on the workers instead of copying the working tree
  --git_ref REF            commit, tag or branch to check out after cloning
  --python_version V       Python of the workers' environment (default 3.11)
  --env KEY=VALUE          environment of the trainer, repeatable (e.g. LIBTPU_INIT_ARGS)
  --evaluator              start the evaluator job of the workdir's run, not training
  --logs                   follow worker 0's log of the current run
  --stop                   stop the run on all workers (the TPU stays)
  --teardown               delete the TPU (and its queued resource)
  --dry_run                print the commands instead of running them
  --help                   this text

ssh to all workers needs your key in an agent: ssh-add ~/.ssh/google_compute_engine.
Logs: worker i writes ~/phd_jax_run/log on its own disk; read it with
  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=i --command='cat phd_jax_run/log'
EOF
}

declare -A OPTIONS=([name]=value [zone]=value [project]=value [accelerator_type]=value
                    [runtime_version]=value [queued]=flag [spot]=flag [git_url]=value
                    [git_ref]=value [python_version]=value [env]=list [evaluator]=flag
                    [logs]=flag [stop]=flag [teardown]=flag)
name="" zone="" project="" accelerator_type="" runtime_version="" queued=0 spot=0
git_url="" git_ref="" python_version=3.11 env=() evaluator=0 logs=0 stop=0 teardown=0
parse_args "$@"

[[ -n $name ]] || die "--name is required (see --help)"
[[ -n $zone ]] || die "--zone is required (see --help)"
[[ -z $git_ref || -n $git_url ]] || die "--git_ref needs --git_url"
start_args=()  # of tpu_worker.sh start
for assignment in "${env[@]}"; do
  [[ $assignment == ?*=* ]] || die "--env needs KEY=VALUE; got '$assignment'"
  start_args+=(--env "$assignment")
done
((evaluator)) && start_args+=(--evaluator)
((logs + stop + teardown <= 1)) || die "choose one of --logs, --stop, --teardown"
action=run
((logs)) && action=logs
((stop)) && action=stop
((teardown)) && action=teardown
((DRY_RUN)) || need_tool gcloud "to manage Cloud TPUs (https://cloud.google.com/sdk)"

location=("--zone=$zone")
[[ -z $project ]] || location+=("--project=$project")
tpu_vm=(gcloud compute tpus tpu-vm)
queued_resources=(gcloud compute tpus queued-resources)

on_workers() {  # worker(s), remote shell command
  run "${tpu_vm[@]}" ssh "$name" "${location[@]}" "--worker=$1" "--command=$2"
}

delete_tpu() {
  if ((queued)); then
    run "${queued_resources[@]}" delete "$name" "${location[@]}" --force --quiet
  else
    run "${tpu_vm[@]}" delete "$name" "${location[@]}" --quiet
  fi
}

# The TPU's state ("" when it does not exist): a queued resource's, else the VM's.
tpu_state() {
  if ((queued)); then
    "${queued_resources[@]}" describe "$name" "${location[@]}" --format='value(state.state)' 2>/dev/null || true
  else
    "${tpu_vm[@]}" describe "$name" "${location[@]}" --format='value(state)' 2>/dev/null || true
  fi
}

create() {
  local capacity=()
  ((spot)) && capacity=(--spot)
  if ((queued)); then
    run "${queued_resources[@]}" create "$name" "${location[@]}" "--node-id=$name" \
        "--accelerator-type=$accelerator_type" "--runtime-version=$runtime_version" "${capacity[@]}"
  else
    run "${tpu_vm[@]}" create "$name" "${location[@]}" \
        "--accelerator-type=$accelerator_type" "--version=$runtime_version" "${capacity[@]}"
  fi
}

# Create the TPU unless a usable one exists; replace a preempted or failed one; wait
# while it is being provisioned.
ensure_tpu() {
  local ready=READY state
  ((queued)) && ready=ACTIVE
  if ((DRY_RUN)); then
    echo "# unless $name is already $ready (a preempted or failed one is deleted first):"
    create
    return
  fi
  while true; do
    state=$(tpu_state)
    case $state in
      "$ready") echo "$PROG: reusing $name ($state)" >&2; return ;;
      "") create ;;
      PREEMPTED|TERMINATED|FAILED|SUSPENDED) delete_tpu; create ;;
      *) echo "$PROG: $name is $state; waiting" >&2; sleep 30 ;;
    esac
  done
}

# Puts the code where the workers can fetch it; sets `unpack`, the worker-side command
# that (re)creates ~/phd_jax from it.
ship_code() {
  if [[ -n $git_url ]]; then
    unpack="rm -rf $REMOTE_DIR && git clone -q $(quote "$git_url") $REMOTE_DIR"
    [[ -z $git_ref ]] || unpack+=" && git -C $REMOTE_DIR checkout -q $(quote "$git_ref")"
    return
  fi
  git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1 || die "$ROOT is not a git checkout: use --git_url"
  local tarball=${TMPDIR:-/tmp}/phd_jax-$name.tar.gz
  local list=(git -C "$ROOT" ls-files -z --cached --others --exclude-standard)
  local pack=(tar -C "$ROOT" --null --ignore-failed-read -T - -czf "$tarball")
  local pipeline
  pipeline="$(quote_words "${list[@]}") | $(quote_words "${pack[@]}")"
  if ((DRY_RUN)); then
    printf '%s\n' "$pipeline"
  else
    printf '+ %s\n' "$pipeline" >&2
    "${list[@]}" | "${pack[@]}"
  fi
  run "${tpu_vm[@]}" scp "$tarball" "$name:$REMOTE_DIR.tar.gz" "${location[@]}" --worker=all
  unpack="rm -rf $REMOTE_DIR && mkdir $REMOTE_DIR && tar -xzf $REMOTE_DIR.tar.gz -C $REMOTE_DIR"
}

worker_script="bash $REMOTE_DIR/launch/tpu_worker.sh"
stop_run="if [ -f $REMOTE_DIR/launch/tpu_worker.sh ]; then $worker_script stop; fi"
case $action in
  teardown) delete_tpu; exit 0 ;;
  stop) on_workers all "$stop_run"; exit 0 ;;
  logs) on_workers 0 "$worker_script logs"; exit ;;
esac

[[ -n $accelerator_type ]] || die "--accelerator_type is required to run (e.g. v5p-64)"
if [[ -z $runtime_version ]]; then
  case $accelerator_type in
    v6e-*) runtime_version=v2-alpha-tpuv6e ;;
    v5p-*) runtime_version=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) runtime_version=v2-alpha-tpuv5-lite ;;
    v2-*|v3-*|v4-*) runtime_version=tpu-ubuntu2204-base ;;
    *) die "no default TPU software version for '$accelerator_type': pass --runtime_version" ;;
  esac
fi
if ((evaluator)); then
  check_evaluator_args "${TRAINER_ARGS[@]}"
else
  check_trainer_args "${TRAINER_ARGS[@]}"
fi
workdir=$(trainer_flag workdir "${TRAINER_ARGS[@]}")
[[ -z $workdir || $workdir == gs://* ]] || die "the workdir must be a gs:// path that every worker shares; got '$workdir'"

ensure_tpu
ship_code
# Stop an earlier run first (it holds the TPU), then replace the code and install.
on_workers all "$stop_run; $unpack && $worker_script install --python_version $(quote "$python_version")"
on_workers all "$worker_script start $(quote_words "${start_args[@]}" -- "${TRAINER_ARGS[@]}")"
on_workers 0 "$worker_script logs"
