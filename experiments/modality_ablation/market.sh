#!/usr/bin/env bash
# The synthetic market of the modality ablation (50 tickers x 1,500 sessions, planted price,
# calendar, exogenous and news signals), ingested once into outputs/modality_ablation/store.
# The compression and specialists benchmarks train their wide teacher on it. Run from the repository root.
set -euo pipefail
R=outputs/modality_ablation/raw S=outputs/modality_ablation/store
[ -f $S/manifest.parquet ] && exit 0
python -m forecast synth out=$R tickers=50 days=1500 seed=0 end=2024-12-31 news_rate=0.1 \
    strength.price=0.08 strength.exogenous=0.08 strength.calendar=0.08 strength.news=0.3
python -m forecast ingest path=$R/prices store=$S exogenous.path=$R/macro.csv 'exogenous.lag_days={CPI:45}' \
    news.path=$R/news.csv
