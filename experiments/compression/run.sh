#!/usr/bin/env bash
# The compression benchmark (experiments/compression/README.md): one teacher, compressed for this host
# and for each device profile. Run from the repository root; results land in experiments/compression/.
set -euo pipefail
URI=sqlite:///outputs/compression/mlflow.db
if [ -z "${TEACHER:-}" ]; then
  bash experiments/modality_ablation/market.sh   # the synthetic market, built once
  TEACHER=$(python -m forecast train experiment=modality_ablation model.d_model=128 model.backbone.n_layers=4 \
      trainer.max_epochs=4 logger.tracking_uri=$URI logger.experiment_name=compression run_name=teacher_synth \
      trainer.enable_progress_bar=false | tail -1 | sed 's/run_id=\([0-9a-f]*\).*/\1/')
fi
for device in auto edge_box phone; do
  python -m forecast compress model=$TEACHER device=$device logger.tracking_uri=$URI logger.experiment_name=compression \
      search.exhaustive=true out=outputs/compression/runs cache=outputs/compression/cache progress=false \
      > experiments/compression/$device.txt 2>&1 || true   # exit 1: nothing met that device's budget (reported)
done
