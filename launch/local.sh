#!/usr/bin/env bash
# N processes on this machine as one multi-process JAX run: the laptop stand-in for a TPU pod
# or a GPU cluster, and what the tests use.
#
#   bash launch/local.sh [--num_processes N] [--cpu_devices D] -- python -m ecgclip_jax.train ...
#
# Process i gets JAX_COORDINATOR_ADDRESS=localhost:PORT, JAX_NUM_PROCESSES=N and
# JAX_PROCESS_ID=i, which `parallel.initialize_distributed` reads. See --help.
set -euo pipefail

prog=local.sh

usage() {
  cat <<'EOF'
Usage: launch/local.sh [--num_processes N] [--cpu_devices D] [--port P] [--log_dir DIR]
                       [--grace_s S] [--dry-run] [--help] -- COMMAND [ARGS...]

Starts N copies of COMMAND on localhost as one multi-process JAX run. Process i gets
  JAX_COORDINATOR_ADDRESS=localhost:PORT  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i
(read by ecgclip_jax.parallel.initialize_distributed, which the trainer calls first).

Flags (also as --flag=value):
  --num_processes N  processes to start (default 2)
  --cpu_devices D    simulate D CPU devices per process: JAX_NUM_CPU_DEVICES=D and
                     JAX_PLATFORMS=cpu (default: leave the platform alone)
  --port P           coordinator port on localhost (default: a free port)
  --log_dir DIR      also append process i's output to DIR/process_i.log
  --grace_s S        seconds between SIGTERM and SIGKILL when stopping after a failure
                     (default 10)
  --dry-run          print each process's exact environment and command line, run nothing
  -h, --help         this help

Output: every line of process i is printed as "[i] LINE" on stdout (stdout and stderr of
the process together).

Supervision, never a silent hang:
  * a process that exits non-zero stops the run: "local.sh: process i exited with code c;
    stopping the others" on stderr, SIGTERM to the others, SIGKILL after --grace_s, and
    local.sh exits with that code;
  * SIGTERM / SIGINT / SIGHUP sent to local.sh is forwarded to every process (SIGHUP as
    SIGTERM): this simulates a preemption, where the trainer saves a checkpoint and exits 0.
    local.sh then waits for all of them; a second signal kills them (SIGKILL);
  * local.sh exits 0 only when all N processes exit 0.
Each process runs in its own process group, and signals go to the whole group.

Examples:
  # 2 processes x 4 simulated CPU devices = 8 devices in one mesh
  bash launch/local.sh --num_processes 2 --cpu_devices 4 -- \
      python -m ecgclip_jax.train --config configs/demo.py --workdir workdirs/demo_2proc
  bash launch/local.sh --dry-run --cpu_devices 2 -- python -c 'import jax; print(jax.devices())'
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

num_processes=2
cpu_devices=""
port=""
log_dir=""
grace_s=10
dry_run=0
split_flag_values "$@"
set -- "${FLAGS_SPLIT[@]}"
while (($#)); do
  arg=$1
  shift
  [[ $arg == -- ]] && break
  case $arg in
    --num_processes | --cpu_devices | --port | --log_dir | --grace_s)
      (($#)) || die "$arg needs a value (see --help)"
      case $arg in
        --num_processes) num_processes=$1 ;;
        --cpu_devices) cpu_devices=$1 ;;
        --port) port=$1 ;;
        --log_dir) log_dir=$1 ;;
        --grace_s) grace_s=$1 ;;
      esac
      shift
      ;;
    --dry-run | --dry_run) dry_run=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument: $arg (see --help; the command goes after --)" ;;
  esac
done
(($#)) || die "no command: put it after --, e.g. -- python -m ecgclip_jax.train ... (see --help)"
command=("$@")

is_count "$num_processes" || die "--num_processes must be a positive integer, got '$num_processes'"
[[ -z $cpu_devices ]] || is_count "$cpu_devices" ||
  die "--cpu_devices must be a positive integer, got '$cpu_devices'"
[[ $grace_s =~ ^[0-9]+$ ]] || die "--grace_s must be a whole number of seconds, got '$grace_s'"
if [[ -n $port ]]; then
  if ! is_count "$port" || ((port > 65535)); then
    die "--port must be in 1..65535, got '$port'"
  fi
else
  python=${PYTHON:-$(command -v python3 || command -v python || true)}
  [[ -n $python ]] || die "no python3 to pick a free port with: pass --port P"
  port=$("$python" -c 'import socket
s = socket.socket()
s.bind(("localhost", 0))
print(s.getsockname()[1])') || die "could not pick a free port with $python: pass --port P"
fi

# The environment of process i.
process_env() {
  local env=("JAX_COORDINATOR_ADDRESS=localhost:$port" "JAX_NUM_PROCESSES=$num_processes"
    "JAX_PROCESS_ID=$1")
  [[ -z $cpu_devices ]] || env+=("JAX_NUM_CPU_DEVICES=$cpu_devices" "JAX_PLATFORMS=cpu")
  printf '%s\n' "${env[@]}"
}

if ((dry_run)); then
  logs=${log_dir:+, output also appended to $log_dir/process_<i>.log}
  echo "# $prog: $num_processes processes, coordinator localhost:$port$logs"
  for ((i = 0; i < num_processes; i++)); do
    mapfile -t env < <(process_env "$i")
    shell_line "${env[@]}" "${command[@]}"
  done
  exit 0
fi

command -v -- "${command[0]}" >/dev/null || die "command not found: ${command[0]}"
[[ -z $log_dir ]] || mkdir -p "$log_dir"
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/local_sh.XXXXXX")

pids=()          # pid (= process group) of process i; empty once it has been waited for
printer_pids=()  # the reader that prefixes process i's output
live=0
exit_code=0
failed=""        # index of the first process that failed
signals=0
kill_in=-1       # polls (0.2 s each) left before the remaining processes get SIGKILL

signal_all() {  # $1: signal name; to every running process's group
  local pid
  for pid in "${pids[@]}"; do
    [[ -z $pid ]] || kill -s "$1" -- "-$pid" 2>/dev/null || kill -s "$1" "$pid" 2>/dev/null || true
  done
}

# shellcheck disable=SC2329  # called by the traps below
on_signal() {  # $1: the signal local.sh received
  local forward=$1
  [[ $forward != HUP ]] || forward=TERM
  if ((signals++ == 0)); then
    echo "$prog: got SIG$1; forwarding SIG$forward to the $live running process(es)" >&2
    signal_all "$forward"
  else
    echo "$prog: got SIG$1 again; killing the $live running process(es)" >&2
    signal_all KILL
  fi
}

# shellcheck disable=SC2329  # called by the EXIT trap
cleanup() {
  signal_all KILL  # only processes still running, i.e. when local.sh itself fails
  rm -rf "$run_dir"
}

print_output() {  # $1: process index; reads the process's output on stdin
  trap '' INT TERM HUP  # keep printing until the process closes its output
  # A shell loop, not awk: mawk (Debian's awk) reads a pipe in blocks, which held a run's
  # output back until the process ended.
  local line
  if [[ -n $log_dir ]]; then
    exec 3>>"$log_dir/process_$1.log"
  else
    exec 3>/dev/null
  fi
  while IFS= read -r line || [[ -n $line ]]; do
    printf '[%s] %s\n' "$1" "$line"
    printf '%s\n' "$line" >&3
  done
}

trap cleanup EXIT
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap 'on_signal HUP' HUP

for ((i = 0; i < num_processes; i++)); do
  ((signals == 0)) || break  # stopped while starting: those already started got the signal
  mkfifo "$run_dir/out.$i"
  print_output "$i" <"$run_dir/out.$i" &
  printer_pids[i]=$!
  mapfile -t env < <(process_env "$i")
  set -m  # its own process group: signals reach it (and its children) only through local.sh
  env "${env[@]}" "${command[@]}" >"$run_dir/out.$i" 2>&1 </dev/null &
  pids[i]=$!
  set +m
  live=$((live + 1))
done

while ((live > 0)); do
  for ((i = 0; i < num_processes; i++)); do
    pid=${pids[i]}
    if [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null; then
      continue  # waited for already, or still running
    fi
    code=0
    wait "$pid" 2>/dev/null || code=$?  # no "Killed" notice from bash
    pids[i]=""
    live=$((live - 1))
    if ((code == 0)) || [[ -n $failed ]]; then
      continue
    fi
    failed=$i
    exit_code=$code
    if ((live > 0 && signals == 0)); then
      echo "$prog: process $i exited with code $code; stopping the others" >&2
      signal_all TERM
      kill_in=$((grace_s * 5))
    else
      echo "$prog: process $i exited with code $code" >&2
    fi
  done
  if ((live > 0 && kill_in == 0)); then
    echo "$prog: $live process(es) still running ${grace_s}s after SIGTERM; sending SIGKILL" >&2
    signal_all KILL
  fi
  ((kill_in < 0)) || kill_in=$((kill_in - 1))
  ((live == 0)) || sleep 0.2 || true
done

# The printers end once every writer of their pipe is gone; a leftover grandchild that
# keeps the pipe open gets 5 s.
for ((t = 0; t < 25; t++)); do
  alive=0
  for pid in "${printer_pids[@]}"; do
    ! kill -0 "$pid" 2>/dev/null || alive=1
  done
  ((alive)) || break
  sleep 0.2 || true
done
for pid in "${printer_pids[@]}"; do
  kill -s KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
exit "$exit_code"
