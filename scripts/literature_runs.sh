#!/usr/bin/env bash
# The papers' presets side by side on one GPU for a fixed time, then test/nll_iw (K = 5000) of
# snapshots along the way: the rows and the curve of "Against the literature" in docs/results.md.
#
#   scripts/literature_runs.sh MINUTES OUT_DIR [PRESET ...]
#
# Each preset trains for MINUTES (trainer.max_time), keeping a snapshot every N epochs as
# OUT_DIR/PRESET/checkpoints/snapshot-epochNNNN.ckpt. Then scripts/evaluate.py scores the best
# checkpoint (the one the run tests), the last snapshot, and snapshots 1, 2, 4, 8 ..., each
# result kept as OUT_DIR/PRESET/evaluations/<checkpoint>.json. Data: VAELAB_DATA_DIR. The
# presets run side by side: a small MLP's step leaves a GPU mostly idle.
# HARDWARE=cpu K=20 scripts/literature_runs.sh 1 outputs/try burda2015_vae: a try without a GPU.
set -u
hardware=${HARDWARE:-gpu}
k=${K:-5000}
minutes=$1
out=$2
shift 2
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(burda2015_vae burda2015_iwae vampprior2018 vampprior2018_standard)
mkdir -p "$out"

train() {  # preset, epochs between snapshots
  python train.py experiment="$1" hardware="$hardware" hydra.run.dir="$out/$1" print_config=false \
    trainer.max_time="$(printf "00:%02d:%02d:00" $((minutes / 60)) $((minutes % 60)))" callbacks.progress_bar.refresh_rate=0 \
    +callbacks.snapshots._target_=lightning.pytorch.callbacks.ModelCheckpoint \
    +callbacks.snapshots.dirpath="$out/$1/checkpoints" +callbacks.snapshots.every_n_epochs="$2" \
    +callbacks.snapshots.save_top_k=-1 "+callbacks.snapshots.filename='snapshot-epoch{epoch:04d}'" \
    +callbacks.snapshots.auto_insert_metric_name=false >"$out/$1.log" 2>&1
  echo "$1: train.py exit $?" >>"$out/status.txt"
}

evaluate() {  # preset: the best checkpoint, the last snapshot, then snapshots 1, 2, 4, 8 ...
  local run=$out/$1 picked=() i=1
  mapfile -t snapshots < <(ls "$run"/checkpoints/snapshot-*.ckpt 2>/dev/null | sort)
  picked+=($(ls "$run"/checkpoints/epoch*.ckpt 2>/dev/null))
  [ ${#snapshots[@]} -gt 0 ] && picked+=("${snapshots[-1]}")
  while [ "$i" -le ${#snapshots[@]} ]; do picked+=("${snapshots[$((i - 1))]}"); i=$((i * 2)); done
  for ckpt in $(printf '%s\n' "${picked[@]}" | awk '!seen[$0]++'); do
    python scripts/evaluate.py ckpt_path="$ckpt" iw_samples="$k" chunk_size=200 batch_size=500 \
      >>"$out/$1.eval.log" 2>&1
    echo "$1 $(basename "$ckpt"): evaluate.py exit $?" >>"$out/status.txt"
  done
}

for preset in "${presets[@]}"; do
  case $preset in burda*) every=5 ;; *) every=20 ;; esac
  train "$preset" "$every" &
done
wait
for preset in "${presets[@]}"; do evaluate "$preset" & done
wait
