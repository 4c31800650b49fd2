#!/usr/bin/env bash
# The specialists benchmark (experiments/specialists/README.md): a wide multimodal full model on the
# synthetic market, `specialise` on it, then `predict` with the full and the routed model over the
# same sessions. Run from the repository root; results land in experiments/specialists/.
set -euo pipefail
URI=sqlite:///outputs/specialists/mlflow.db
OUT=experiments/specialists
if [ -z "${FULL:-}" ]; then
  bash experiments/modality_ablation/market.sh   # the synthetic market, built once
  FULL=$(python -m forecast train experiment=modality_ablation model.d_model=128 model.backbone.n_layers=4 \
      trainer.max_epochs=${EPOCHS:-2} logger.tracking_uri=$URI trainer.default_root_dir=outputs/specialists/ckpt \
      trainer.enable_progress_bar=false | tail -1 | sed 's/run_id=\([0-9a-f]*\).*/\1/')
fi
python -m forecast specialise model=$FULL logger.tracking_uri=$URI out=outputs/specialists/runs epochs=3 \
    > $OUT/specialise.txt 2>&1
DAYS="catch_up=true since=2024-12-02 date=2024-12-31"
rm -f outputs/specialists/full.db outputs/specialists/routed.db  # rows of this run's models only
python -m forecast predict model=$FULL logger.tracking_uri=$URI predictions.url=sqlite:///outputs/specialists/full.db \
    $DAYS show=5 > $OUT/predict_full.txt 2>&1
python -m forecast predict model=models:/forecast_routed@routed logger.tracking_uri=$URI \
    predictions.url=sqlite:///outputs/specialists/routed.db $DAYS show=5 > $OUT/predict_routed.txt 2>&1
python experiments/specialists/compare_predict.py outputs/specialists/full.db outputs/specialists/routed.db \
    > $OUT/predict_compare.txt
