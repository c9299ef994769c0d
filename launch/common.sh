# Helpers shared by the launch scripts (sourced; each script sets $prog first).
# shellcheck shell=bash

die() {
  echo "${prog:-launch}: $*" >&2
  exit 2
}

# Prints its arguments as one shell command line (the quoting of Python's shlex.quote).
shell_line() {
  local word quoted=() q="'\\''"
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      quoted+=("$word")
    else
      quoted+=("'${word//\'/$q}'")
    fi
  done
  printf '%s\n' "${quoted[*]}"
}

is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

# Sets the array FLAGS_SPLIT to "$@" with every --flag=value before the first "--" split
# into --flag value; what follows "--" (the trainer's own flags) is kept as given.
split_flag_values() {
  FLAGS_SPLIT=()
  while (($#)); do
    case $1 in
      --) FLAGS_SPLIT+=("$@"); return ;;
      --*=*) FLAGS_SPLIT+=("${1%%=*}" "${1#*=}") ;;
      *) FLAGS_SPLIT+=("$1") ;;
    esac
    shift
  done
}
