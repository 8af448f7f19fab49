#!/usr/bin/env bash
# The paper's factor study (Table 7) and generalization study (Table 6) on one task, tracked in
# the MLflow experiment "studies", then the report tables. The LLM runs once per (model, task,
# split): every other job reads the layer traces.
#   ADAINFER_DATA_DIR=../shared/data bash scripts/studies.sh [model] [task] [n] [out]
set -euo pipefail
model=${1:-smollm2_135m}
task=${2:-sst2}
n=${3:-200}
out=${4:-docs/studies}
common=(preset=paper model="$model" task="$task" shots=5 task.n_train="$n" task.n_test="$n"
        mlflow.experiment=studies)
cd "$(dirname "$0")/.."

# Factor study: which per-layer features the classifier sees.
python run.py -m "${common[@]}" classifier=svm,logreg feature_set=base,attn,mlp,hidden

# Generalization: fit the SVM elsewhere, test on $task.
other=ag_news; [ "$task" = ag_news ] && other=sst2
python run.py "${common[@]}" classifier=svm "+task@fit.tasks.other=$other" "fit.tasks.other.n_train=$n"
python run.py "${common[@]}" classifier=svm "+task@fit.tasks.other=$other" "fit.tasks.other.n_train=$n" \
  fit.include_own=true
fit_model=gemma3_270m; [ "$model" = gemma3_270m ] && fit_model=smollm2_135m
python run.py "${common[@]}" classifier=svm "+model@fit.model=$fit_model"

python -m adainfer.report --experiment studies --out "$out"
# docs/studies/2026-11-28-factors-and-generalization.md quotes factors.md, generalization.md and tradeoff.png from "$out".
