#!/usr/bin/env bash
# The runs behind docs/studies/2026-11-29-paper-tables.md: the paper's tables on the two embedded models, tracked in the
# MLflow experiment "results" (of $MLFLOW_TRACKING_URI, else MLflow's default store), then the
# report (tables as Markdown/CSV, figures) in $out. The LLM runs once per (model, task, shots,
# split); every classifier and study job after that reads the cached layer traces. Every job
# starts from preset=paper: the paper's AdaInfer, not the default job's choices. Cheap tasks
# come first, and a report is written after them, so a cut-short run still leaves tables.
#   ADAINFER_DATA_DIR=../shared/data bash scripts/results.sh [n] [out]
set -euo pipefail
n=${1:-100}
out=${2:-docs/results}
cd "$(dirname "$0")/.."
models=smollm2_135m,gemma3_270m
policies=(preset=paper classifier=svm,crf,gap task.n_train="$n" task.n_test="$n" mlflow.experiment=results)
grid=(shots=0,5 "${policies[@]}")

# Tables 2/3, 4 and 8/9, classification and rule understanding: zero- and 5-shot, SVM/CRF/GAP.
python run.py -m model=$models task=sst2,ag_news,rules "${grid[@]}"

# Table 7 (factor study) and Table 6 (generalization) on SST-2, 5-shot, for each model.
study=(preset=paper task=sst2 shots=5 task.n_train="$n" task.n_test="$n" mlflow.experiment=results)
python run.py -m model=$models "${study[@]}" classifier=svm,logreg feature_set=attn,mlp,hidden
python run.py -m model=$models "${study[@]}" classifier=logreg
python run.py -m model=$models "${study[@]}" classifier=svm "+task@fit.tasks.other=ag_news" \
  "fit.tasks.other.n_train=$n" fit.include_own=false,true
python run.py "${study[@]}" model=smollm2_135m classifier=svm "+model@fit.model=gemma3_270m"
python run.py "${study[@]}" model=gemma3_270m classifier=svm "+model@fit.model=smollm2_135m"
python -m adainfer.report --experiment results --out "$out" --no-log

# Table 9's few-shot setting, the paper's average over 5, 10, 15 and 20 shots: the 10-, 15- and
# 20-shot runs of SST-2, AG News and rules (5-shot is in the first grid). Prompts that do not fit
# the context lose demonstrations; the runs log how many (demos_dropped, prompts_truncated).
python run.py -m model=$models task=sst2,ag_news,rules shots=10,15,20 "${policies[@]}"

# Tables 2/3, 4 and 8/9, question answering (long 5-shot prompts: the slow part on a CPU).
python run.py -m model=$models task=commonsense_qa,mmlu,squad "${grid[@]}"
python -m adainfer.report --experiment results --out "$out"
python scripts/show_runs.py --experiment results --no-suites --csv "$out/dropped.csv" \
  --metrics demos_dropped prompts_truncated > /dev/null
python scripts/paper_beside.py --ours "$out" --dropped "$out/dropped.csv" \
  --out "$out/paper_beside.md"
