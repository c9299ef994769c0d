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
