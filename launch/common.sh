# Helpers shared by the launch scripts (sourced, never run): errors, argument checks,
# shell quoting, dry runs, and checks of the trainer's and the evaluator's arguments.
# shellcheck shell=bash

PROG=$(basename "$0")
DRY_RUN=0

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

# Parses the command line "$@" by the table OPTIONS (an associative array: option name
# -> "value", "flag" or "list") that the calling script declares, into variables of the
# same names, set beforehand to their defaults: a value, 1 for a flag given, a list (array)
# grows by one entry per use. Takes --flag=value and --flag value alike, calls `usage` on
# --help, sets DRY_RUN on --dry_run, and leaves everything after `--` in TRAINER_ARGS.
# shellcheck disable=SC2034  # the caller reads TRAINER_ARGS
parse_args() {
  TRAINER_ARGS=()
  local _opt  # (a name no option has: printf -v must reach the caller's variable)
  while (($#)); do
    [[ $1 != --*=* ]] || set -- "${1%%=*}" "${1#*=}" "${@:2}"
    case $1 in
      -h|--help) usage; exit 0 ;;
      --dry_run) DRY_RUN=1; shift; continue ;;
      --) shift; TRAINER_ARGS=("$@"); return ;;
    esac
    _opt=${1#--}
    [[ $1 == --* && -n ${OPTIONS[$_opt]:-} ]] ||
      die "unknown option '$1' (trainer arguments go after '--'; see --help)"
    if [[ ${OPTIONS[$_opt]} == flag ]]; then
      printf -v "$_opt" 1
      shift
      continue
    fi
    (($# >= 2)) || die "$1 needs a value (see --help)"
    if [[ ${OPTIONS[$_opt]} == list ]]; then
      local -n _list=$_opt
      _list+=("$2")
      unset -n _list
    else
      printf -v "$_opt" '%s' "$2"
    fi
    shift 2
  done
}

need_uint() {  # name value
  [[ $2 =~ ^[0-9]+$ && $2 -ge 1 ]] || die "$1 must be a positive integer; got '$2'"
}

need_tool() {  # tool, what it is for
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH; it is needed $2"
}

# One word quoted for a POSIX shell the way Python's shlex.quote does: bare when it only
# holds safe characters, else in single quotes.
quote() {
  local LC_ALL=C squote="'\"'\"'"
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/$squote}"
  fi
}

quote_words() {  # the words quoted and joined by spaces
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

# Runs a command, or on a dry run prints it (on stdout, shell-quoted) instead. Real runs
# echo it to stderr first, so logs show what ran.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_words "$@")"
  else
    printf '+ %s\n' "$(quote_words "$@")" >&2
    "$@"
  fi
}

# The value of the trainer flag --NAME (as --NAME=V or --NAME V) among the remaining
# arguments; prints nothing when absent.
trainer_flag() {
  local name=$1
  shift
  while (($#)); do
    case $1 in
      "--$name="*) printf '%s' "${1#*=}"; return ;;
      "--$name") (($# >= 2)) && printf '%s' "$2"; return ;;
    esac
    shift
  done
}

# The trainer needs --config, and --workdir unless it only does its own --dry_run; the
# launcher sets the distributed flags itself, so a user-given one would contradict it.
check_trainer_args() {
  (($#)) || die "no trainer arguments: put them after '--', e.g. -- --config=configs/tiny.py --workdir=DIR"
  [[ -n $(trainer_flag config "$@") ]] || die "the trainer arguments lack --config=FILE[:VARIANT]"
  local arg trainer_dry_run=0
  for arg in "$@"; do
    case $arg in
      --coordinator|--coordinator=*|--num_processes|--num_processes=*|--process_id|--process_id=*)
        die "do not pass ${arg%%=*} to the trainer: $PROG sets it" ;;
      --dry_run|--dry_run=true) trainer_dry_run=1 ;;
    esac
  done
  ((trainer_dry_run)) || [[ -n $(trainer_flag workdir "$@") ]] || die "the trainer arguments lack --workdir=DIR"
}

# The evaluator job (--evaluator: python -m phd_jax.evaluate --follow) needs --workdir, the
# run it follows, and runs as one process: a checkpoint or distributed flag contradicts it.
check_evaluator_args() {
  [[ -n $(trainer_flag workdir "$@") ]] || die "the evaluator arguments lack --workdir=RUN, the run to follow"
  local arg
  for arg in "$@"; do
    case $arg in
      --checkpoint|--checkpoint=*|--coordinator|--coordinator=*|--num_processes|--num_processes=*|--process_id|--process_id=*)
        die "do not pass ${arg%%=*} to the evaluator: it follows --workdir in one process" ;;
    esac
  done
}

# Where per-rank logs go: the given directory, else <workdir>/logs for a local workdir.
default_log_dir() {  # log_dir workdir
  if [[ -n $1 ]]; then
    printf '%s' "$1"
  elif [[ -n $2 && $2 != *://* ]]; then
    printf '%s' "$2/logs"
  else
    die "no local --workdir to keep the logs in: pass --log_dir DIR"
  fi
}

# Warns, without stopping the launch, when the JAX of the interpreter $1 finds no $2 (gpu |
# tpu) devices, e.g. the CPU-only jax of `make install` on a GPU node.
check_accelerator() {  # python platform
  run "$1" "$LAUNCH_DIR/check_accelerator.py" "$2" || true
}

# The interpreter: $PYTHON, else the repository's .venv, else python3 on PATH.
default_python() {
  local root=$1
  if [[ -n ${PYTHON:-} ]]; then
    printf '%s' "$PYTHON"
  elif [[ -x $root/.venv/bin/python ]]; then
    printf '%s' "$root/.venv/bin/python"
  else
    printf 'python3'
  fi
}
