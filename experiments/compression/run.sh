#!/usr/bin/env bash
# The compression benchmark (experiments/compression/README.md): one teacher, compressed for this host
# and for each device profile. Run from the repository root; results land in experiments/compression/.
set -euo pipefail
URI=sqlite:///outputs/compression/mlflow.db
if [ -z "${TEACHER:-}" ]; then
  R=outputs/modality_ablation/raw S=outputs/modality_ablation/store
  [ -f $S/manifest.parquet ] || { python -m forecast synth out=$R tickers=50 days=1500 seed=0 end=2024-12-31 news_rate=0.1 \
      strength.price=0.08 strength.exogenous=0.08 strength.calendar=0.08 strength.news=0.3
    python -m forecast ingest path=$R/prices store=$S exogenous.path=$R/macro.csv 'exogenous.lag_days={CPI:45}' news.path=$R/news.csv; }
  TEACHER=$(python -m forecast train experiment=modality_ablation model.d_model=128 model.backbone.n_layers=4 \
      trainer.max_epochs=4 logger.tracking_uri=$URI logger.experiment_name=compression run_name=teacher_synth \
      trainer.enable_progress_bar=false | tail -1 | sed 's/run_id=\([0-9a-f]*\).*/\1/')
fi
for device in auto edge_box phone; do
  python -m forecast compress model=$TEACHER device=$device logger.tracking_uri=$URI logger.experiment_name=compression \
      search.exhaustive=true out=outputs/compression/runs cache=outputs/compression/cache progress=false \
      > experiments/compression/$device.txt 2>&1 || true   # exit 1: nothing met that device's budget (reported)
done
