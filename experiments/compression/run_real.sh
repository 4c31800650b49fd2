#!/usr/bin/env bash
# The compression report on the bundled real data (experiments/compression/README.md, "Real data"):
# a wide Transformer teacher on the sample, compressed for this host. Run from the repository root.
#   bash experiments/compression/run_real.sh                       # SPX alone (the default data): block IC
#   NAME=multi EXP=experiment=multi_ticker bash experiments/compression/run_real.sh   # every ticker, one model
set -euo pipefail
NAME=${NAME:-spx}
URI=sqlite:///outputs/compression_real/mlflow.db
OUT=experiments/compression
if [ -z "${TEACHER:-}" ]; then
  TEACHER=$(python -m forecast train ${EXP:-} model/backbone=transformer model.d_model=128 \
      model.backbone.n_layers=4 trainer.max_epochs=${EPOCHS:-4} logger.tracking_uri=$URI \
      logger.experiment_name=compression_real run_name=teacher_real_$NAME trainer.enable_progress_bar=false \
      2> /dev/null | tee $OUT/real_${NAME}_teacher.txt | tail -1 | sed 's/run_id=\([0-9a-f]*\).*/\1/')
fi
python -m forecast compress model=$TEACHER device=auto logger.tracking_uri=$URI logger.experiment_name=compression_real \
    search.exhaustive=true out=outputs/compression_real/runs cache=outputs/compression_real/cache progress=false \
    registry.alias=real_$NAME > $OUT/real_${NAME}_auto.txt 2>&1 || true   # exit 1: nothing met the budget (reported)
