#!/usr/bin/env bash
# Pre-training on a Slurm GPU cluster: writes an sbatch script for N nodes x G GPUs and
# submits it. jax.distributed.initialize() reads the layout from the SLURM_* variables of
# each task, so no coordinator flags are needed.
#
#   bash launch/slurm.sh --nodes 2 --gpus_per_node 8 --partition gpu --time 24:00:00 -- \
#       --config configs/ptbxl_pretrain.py --workdir /shared/ecgclip/run1
#
# See --help; --dry-run prints the script and the sbatch command and submits nothing.
set -euo pipefail

prog=slurm.sh
repo=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<'EOF'
Usage: launch/slurm.sh [--nodes N] [--gpus_per_node G] [--per gpu|node] [--partition P]
                       [--time HH:MM:SS] [--account A] [flags] [--dry-run] [--help]
                       -- TRAIN_FLAGS...

Writes an sbatch script that runs `srun python -m ecgclip_jax.train TRAIN_FLAGS` on N nodes
with G GPUs each, and submits it with sbatch. TRAIN_FLAGS must include --config and
--workdir; the workdir must be on a file system every node sees (it holds the checkpoints
that a requeued or resubmitted job resumes from).

Flags (also as --flag=value):
  --nodes N            nodes (default 1)
  --gpus_per_node G    GPUs per node (default 8)
  --per gpu|node       gpu (default): one process per GPU, G tasks per node, every task sees
                       the node's G GPUs and jax picks GPU number SLURM_LOCALID for it.
                       node: one process per node that drives all G local GPUs
                       (JAX_LOCAL_DEVICE_IDS=0,...,G-1 overrides jax's one-GPU-per-task
                       default). Same global batch and mesh either way.
  --partition P        #SBATCH --partition
  --time HH:MM:SS      #SBATCH --time (default 24:00:00)
  --account A          #SBATCH --account
  --cpus_per_task C    #SBATCH --cpus-per-task (and passed on to srun)
  --job_name NAME      #SBATCH --job-name (default ecgclip)
  --signal_s S         SIGTERM this many seconds before the time limit (default 120):
                       #SBATCH --signal=TERM@S. The trainer saves a checkpoint on SIGTERM
                       and exits 0; submit again to continue from it.
  --no_requeue         leave out #SBATCH --requeue (with it, a job that Slurm requeues, e.g.
                       after a preemption or a node failure, resumes from its last checkpoint)
  --sbatch ARG         one more #SBATCH line, e.g. --sbatch=--exclusive or
                       --sbatch=--constraint=a100 (repeatable)
  --python PYTHON      Python on the nodes (default: python; sbatch passes your environment,
                       so activate the venv before submitting)
  --log_dir DIR        where the script and the job logs go (default slurm_logs in the
                       checkout); output of job J goes to DIR/NAME-J.out
  --dry-run            print the script and the sbatch command, write and submit nothing
  -h, --help           this help

Do not use --gpus-per-task=1 for the one-process-per-GPU layout: every task would then see
one GPU, numbered 0, while jax asks for GPU number SLURM_LOCALID.

Examples:
  bash launch/slurm.sh --nodes 4 --gpus_per_node 8 --partition gpu --account proj -- \
      --config configs/ptbxl_pretrain.py --workdir /shared/ecgclip/run1
  bash launch/slurm.sh --nodes 2 --per node --dry-run -- \
      --config configs/demo.py --workdir /shared/w
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

nodes=1 gpus_per_node=8 per=gpu partition="" time_limit=24:00:00 account="" cpus_per_task=""
job_name=ecgclip signal_s=120 requeue=1 python=python log_dir=$repo/slurm_logs dry_run=0
extra_sbatch=()
split_flag_values "$@"
set -- "${FLAGS_SPLIT[@]}"
while (($#)); do
  arg=$1
  shift
  [[ $arg == -- ]] && break
  case $arg in
    --nodes | --gpus_per_node | --per | --partition | --time | --account | --cpus_per_task | \
      --job_name | --signal_s | --sbatch | --python | --log_dir)
      (($#)) || die "$arg needs a value (see --help)"
      case $arg in
        --nodes) nodes=$1 ;;
        --gpus_per_node) gpus_per_node=$1 ;;
        --per) per=$1 ;;
        --partition) partition=$1 ;;
        --time) time_limit=$1 ;;
        --account) account=$1 ;;
        --cpus_per_task) cpus_per_task=$1 ;;
        --job_name) job_name=$1 ;;
        --signal_s) signal_s=$1 ;;
        --sbatch) extra_sbatch+=("$1") ;;
        --python) python=$1 ;;
        --log_dir) log_dir=$1 ;;
      esac
      shift
      ;;
    --no_requeue) requeue=0 ;;
    --dry-run | --dry_run) dry_run=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument: $arg (see --help; the trainer's flags go after --)" ;;
  esac
done
train_flags=("$@")

is_count "$nodes" || die "--nodes must be a positive integer, got '$nodes'"
is_count "$gpus_per_node" || die "--gpus_per_node must be a positive integer, got '$gpus_per_node'"
[[ $per == gpu || $per == node ]] || die "--per must be gpu or node, got '$per'"
[[ $time_limit =~ ^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$ ]] ||
  die "--time must look like HH:MM:SS (or D-HH:MM:SS), got '$time_limit'"
[[ -z $cpus_per_task ]] || is_count "$cpus_per_task" ||
  die "--cpus_per_task must be a positive integer, got '$cpus_per_task'"
is_count "$signal_s" || die "--signal_s must be a positive integer, got '$signal_s'"
[[ $job_name =~ ^[A-Za-z0-9_.-]+$ ]] || die "--job_name may only use letters, digits and _ . -"
for sbatch_arg in "${extra_sbatch[@]}"; do
  [[ $sbatch_arg == -* && $sbatch_arg != *$'\n'* ]] ||
    die "--sbatch takes an sbatch option such as --exclusive, got '$sbatch_arg'"
done
has_flag() {  # $1: flag name; true when the trainer's flags set it
  local flag
  for flag in "${train_flags[@]}"; do
    [[ $flag == "$1" || $flag == "$1="* ]] && return 0
  done
  return 1
}
((${#train_flags[@]})) ||
  die "no trainer flags: put them after --, e.g. -- --config configs/X.py --workdir DIR"
has_flag --config || die "the trainer's flags after -- need --config (e.g. --config configs/X.py)"
has_flag --workdir ||
  die "the trainer's flags after -- need --workdir (on a file system every node sees)"
[[ $log_dir == /* ]] || log_dir=$PWD/$log_dir

if [[ $per == gpu ]]; then
  tasks_per_node=$gpus_per_node
  layout="one process per GPU: $nodes node(s) x $gpus_per_node GPUs"
  layout+=" = $((nodes * gpus_per_node)) processes"
else
  tasks_per_node=1
  layout="one process per node driving its $gpus_per_node GPUs: $nodes process(es)"
fi
script_path=$log_dir/$job_name.sbatch

write_script() {
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$job_name"
  echo "#SBATCH --nodes=$nodes"
  echo "#SBATCH --ntasks-per-node=$tasks_per_node"
  echo "#SBATCH --gpus-per-node=$gpus_per_node"
  [[ -z $cpus_per_task ]] || echo "#SBATCH --cpus-per-task=$cpus_per_task"
  echo "#SBATCH --time=$time_limit"
  [[ -z $partition ]] || echo "#SBATCH --partition=$partition"
  [[ -z $account ]] || echo "#SBATCH --account=$account"
  echo "#SBATCH --signal=TERM@$signal_s"
  ((!requeue)) || echo "#SBATCH --requeue"
  echo "#SBATCH --open-mode=append"
  echo "#SBATCH --output=$log_dir/%x-%j.out"
  local sbatch_arg
  for sbatch_arg in "${extra_sbatch[@]}"; do
    echo "#SBATCH $sbatch_arg"
  done
  cat <<EOF
# Written by launch/slurm.sh: $layout.
# Each task's jax.distributed.initialize() reads SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and
# the node list. SIGTERM ${signal_s}s before the time limit (or on preemption): the trainer
# saves a checkpoint and exits 0; a requeued or resubmitted job resumes from it.
set -euo pipefail
cd $(shell_line "$repo")
EOF
  if [[ $per == node ]]; then
    local ids
    ids=$(seq -s, 0 $((gpus_per_node - 1)))
    echo "export JAX_LOCAL_DEVICE_IDS=$ids  # this process drives all of the node's GPUs"
  fi
  local srun=(srun --kill-on-bad-exit=1)
  [[ -z $cpus_per_task ]] || srun+=("--cpus-per-task=$cpus_per_task")
  shell_line "${srun[@]}" "$python" -m ecgclip_jax.train "${train_flags[@]}"
}

submit=(sbatch "$script_path")
if ((dry_run)); then
  echo "# $prog would write $script_path:"
  write_script
  echo "# and run:"
  shell_line "${submit[@]}"
  exit 0
fi

command -v sbatch >/dev/null ||
  die "sbatch not found: run this on a Slurm login node, or use --dry-run"
mkdir -p "$log_dir"
write_script >"$script_path"
echo "$prog: wrote $script_path ($layout)" >&2
echo "+ $(shell_line "${submit[@]}")" >&2
"${submit[@]}"
