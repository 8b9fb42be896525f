#!/usr/bin/env bash
# Runs ON each TPU VM worker (launch/tpu_pod.sh calls it over ssh): installs the pinned
# stack, starts the trainer detached from the ssh session, stops it, follows its log.
set -euo pipefail

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
source "$LAUNCH_DIR/common.sh"
ROOT=$(dirname "$LAUNCH_DIR")
VENV=$HOME/phd_jax_venv
RUN_DIR=$HOME/phd_jax_run  # log, pid (= process group) and exit status of the run
UV_VERSION=0.13.8

usage() {
  cat <<EOF
Usage: launch/tpu_worker.sh install [--python_version V] [--dry_run]
       launch/tpu_worker.sh start [--env KEY=VALUE]... [--dry_run] -- <phd_jax.main arguments>
       launch/tpu_worker.sh start --evaluator [--env KEY=VALUE]... [--dry_run] -- \\
           <phd_jax.evaluate arguments, with --workdir=RUN>
       launch/tpu_worker.sh stop | logs

  install  a virtual environment at ~/phd_jax_venv with Python V (default 3.11, fetched by
           uv when the image lacks it), requirements.txt and jax[tpu] at the pinned jax
           version; skipped when requirements.txt and V are unchanged since the last install
  start    stop any earlier run, then start python -m phd_jax.main in the background, in
           its own session (it survives the ssh connection), logging to
           ~/phd_jax_run/log (the previous run's log moves to log.prev); warns first when
           the environment lacks libtpu. With --evaluator, the evaluator job instead:
           python -m phd_jax.evaluate <arguments> --follow
  stop     stop the run: SIGTERM to its process group, SIGKILL after 60 s
  logs     follow the run's log until it ends; exit with its exit status
EOF
}

install() {
  local python_version=3.11 jax_version stamp uv=$HOME/.local/bin/uv
  declare -A OPTIONS=([python_version]=value)
  parse_args "$@"
  ((${#TRAINER_ARGS[@]} == 0)) || die "install takes no trainer arguments"
  jax_version=$(sed -n 's/^jax==//p' "$ROOT/requirements.txt")
  [[ -n $jax_version ]] || die "requirements.txt pins no jax==VERSION"
  stamp="python $python_version, requirements $(sha256sum "$ROOT/requirements.txt" | cut -c1-16)"
  if [[ $(cat "$VENV/.installed" 2>/dev/null) == "$stamp" ]]; then
    echo "$VENV is up to date ($stamp)"
    return
  fi
  [[ -x $uv ]] || run python3 -m pip install --user -q "uv==$UV_VERSION"
  run rm -rf "$VENV"
  run "$uv" venv -q --python "$python_version" "$VENV"
  # jax[tpu] at the pinned version brings the matching libtpu.
  run "$uv" pip install -q --python "$VENV/bin/python" -r "$ROOT/requirements.txt" \
      "jax[tpu]==$jax_version"
  ((DRY_RUN)) || echo "$stamp" >"$VENV/.installed"
}

start() {
  local env=() evaluator=0
  declare -A OPTIONS=([env]=list [evaluator]=flag)
  parse_args "$@"
  local assignment
  for assignment in "${env[@]}"; do
    [[ $assignment == ?*=* ]] || die "--env needs KEY=VALUE; got '$assignment'"
  done
  set -- "${TRAINER_ARGS[@]}"
  local job=(-m phd_jax.main "$@")
  if ((evaluator)); then
    check_evaluator_args "$@"
    job=(-m phd_jax.evaluate "$@" --follow)
  else
    check_trainer_args "$@"
  fi
  [[ -x $VENV/bin/python ]] || ((DRY_RUN)) || die "no $VENV: run 'install' first"
  ((DRY_RUN)) || stop
  check_accelerator "$VENV/bin/python" tpu
  run mkdir -p "$RUN_DIR"
  [[ ! -f $RUN_DIR/log ]] || run mv "$RUN_DIR/log" "$RUN_DIR/log.prev"
  run rm -f "$RUN_DIR/status"
  # The wrapper records the exit status and drops the pid file of the finished run;
  # setsid gives the run its own process group.
  # shellcheck disable=SC2016
  local cmd=(setsid nohup bash -c 'run_dir=$1; shift; "$@"; echo "$?" >"$run_dir/status"; rm -f "$run_dir/pid"'
             bash "$RUN_DIR" env "${env[@]}" "$VENV/bin/python" "${job[@]}")
  if ((DRY_RUN)); then
    printf 'cd %s && %s >%s 2>&1 </dev/null &\n' "$(quote "$ROOT")" "$(quote_words "${cmd[@]}")" \
        "$(quote "$RUN_DIR/log")"
    return
  fi
  cd "$ROOT"
  "${cmd[@]}" >"$RUN_DIR/log" 2>&1 </dev/null &
  echo "$!" >"$RUN_DIR/pid"
  echo "started ${job[1]} on $(hostname) (process group $!), log: $RUN_DIR/log"
}

stop() {
  [[ -f $RUN_DIR/pid ]] || return 0
  local group
  group=$(cat "$RUN_DIR/pid")
  if kill -0 -- "-$group" 2>/dev/null; then
    echo "stopping the run on $(hostname) (process group $group)"
    kill -TERM -- "-$group" 2>/dev/null || true
    for _ in {1..60}; do
      kill -0 -- "-$group" 2>/dev/null || break
      sleep 1
    done
    kill -KILL -- "-$group" 2>/dev/null || true
  fi
  rm -f "$RUN_DIR/pid"
}

logs() {
  [[ -f $RUN_DIR/log ]] || die "no run on $(hostname): $RUN_DIR/log does not exist"
  if [[ -f $RUN_DIR/pid ]]; then
    tail -n +1 -f --pid="$(cat "$RUN_DIR/pid")" "$RUN_DIR/log"
  else
    cat "$RUN_DIR/log"
  fi
  [[ -f $RUN_DIR/status ]] || die "the run ended without an exit status (stopped, killed or preempted)"
  exit "$(cat "$RUN_DIR/status")"
}

(($#)) || { usage >&2; exit 2; }
case $1 in
  install|start) action=$1; shift; "$action" "$@" ;;
  stop|logs) action=$1; shift; (($# == 0)) || die "$action takes no arguments"; "$action" ;;
  -h|--help) usage ;;
  *) die "unknown command '$1' (install, start, stop or logs; see --help)" ;;
esac
