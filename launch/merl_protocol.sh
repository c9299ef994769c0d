#!/usr/bin/env bash
# MERL's linear-probe protocol on PTB-XL at 500 Hz in one command: build ptbxl/500hz from the
# download, pre-train the MERL recipe on its reports, linear-probe the pre-trained and a
# random-init ECG encoder on MERL's four PTB-XL split files (configs/tasks/merl_ptbxl_*) at 1%,
# 10% and 100% of the labels, each selected on validation (ours) and on test (MERL's rule,
# rows linear_probe_max_test), and write one AUROC table with MERL's published figures beside
# ours (OUT/comparison.md; configs/published/README.md says where they come from).
#
#   bash launch/merl_protocol.sh PTBXL_DOWNLOAD OUT [extra probe flags]
#
# CONFIG=configs/merl_r18.py for the full database (default: its small :ptbxl_slice variant);
# TASK_SETS="merl_ptbxl_super ..." for fewer task sets.
set -euo pipefail
download=${1:?usage: $0 PTBXL_DOWNLOAD OUT [extra probe flags]}
out=${2:?usage: $0 PTBXL_DOWNLOAD OUT [extra probe flags]}
shift 2
config=${CONFIG:-configs/merl_r18.py:ptbxl_slice}
task_sets=${TASK_SETS:-merl_ptbxl_super merl_ptbxl_sub merl_ptbxl_form merl_ptbxl_rhythm}
tfds_dir=${TFDS_DATA_DIR:-$out/tfds}
cd "$(dirname "$0")/.."

python -m ecgclip_jax.train --config "$config" --workdir "$out/pretrain" \
    --config.data.manual_dir="$download" --config.data.data_dir="$tfds_dir"
dirs=()
for task_set in $task_sets; do
  python -m ecgclip_jax.probe --workdir "$out/pretrain" --tasks "$task_set" \
      --out "$out/$task_set/pretrained" --data_dir "$tfds_dir" --methods linear_probe \
      --selection validation,max_test "$@"
  python -m ecgclip_jax.probe --init random --config "$config" --tasks "$task_set" \
      --out "$out/$task_set/random_init" --data_dir "$tfds_dir" --methods linear_probe \
      --selection validation,max_test "$@"
  dirs+=("$out/$task_set/pretrained" "$out/$task_set/random_init")
done
python -m ecgclip_jax.compare "${dirs[@]}" --metric auroc \
    --published configs/published/merl_linear_probe.csv --out "$out/comparison.md"
