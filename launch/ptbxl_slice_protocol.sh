#!/usr/bin/env bash
# The PTB-XL downstream protocol in one command: build ptbxl/100hz from the download,
# pre-train on its reports, probe the 5 superdiagnostic classes with linear probes and
# fine-tuning at 1%, 10% and 100% of the labels for the pre-trained and a random-init model,
# and join both into one table (OUT/comparison.md).
#
#   bash launch/ptbxl_slice_protocol.sh PTBXL_DOWNLOAD OUT [extra probe flags]
#
# CONFIG=configs/ptbxl_pretrain.py for the full database (default: its small :slice variant);
# TASKS=ptbxl_all (or any configs/tasks/ptbxl_*) with PROMPTS=configs/prompts/ptbxl.json
# (prompts keyed by SCP statement) for other task sets.
set -euo pipefail
download=${1:?usage: $0 PTBXL_DOWNLOAD OUT [extra probe flags]}
out=${2:?usage: $0 PTBXL_DOWNLOAD OUT [extra probe flags]}
shift 2
config=${CONFIG:-configs/ptbxl_pretrain.py:slice}
tasks=${TASKS:-ptbxl_superdiagnostic}
prompts=${PROMPTS:-configs/prompts/ptbxl_superdiagnostic.json}  # keyed by the task set's tasks
tfds_dir=${TFDS_DATA_DIR:-$out/tfds}
cd "$(dirname "$0")/.."

python -m ecgclip_jax.train --config "$config" --workdir "$out/pretrain" \
    --config.data.manual_dir="$download" --config.data.data_dir="$tfds_dir"
python -m ecgclip_jax.probe --workdir "$out/pretrain" --tasks "$tasks" --out "$out/pretrained" \
    --data_dir "$tfds_dir" --methods linear_probe,finetune,zero_shot \
    --prompts "$prompts" "$@"
python -m ecgclip_jax.probe --init random --config "$config" --tasks "$tasks" \
    --out "$out/random_init" --data_dir "$tfds_dir" --methods linear_probe,finetune "$@"
python -m ecgclip_jax.compare "$out/pretrained" "$out/random_init" --out "$out/comparison.md"
