#!/usr/bin/env bash
# Train the default model in ONE accelerator call (docs/TRAINING_RECIPE.md): the recipe preset's
# main loop, the error-corrector and probe phases, then export + int8 quantization (parity and
# size checks) and, with the time left, the eval. The equal-training-compute control (the same
# recipe at one fixed depth) trains beside it on the same device for the same wall time. What
# must come back goes under $OUT, at most 8 files of at most 16 MiB: the checkpoints in parts
# (model.pt.part-N; main.pt.part-0, the model before the corrector and probe phases, and
# control.pt.part-0, both stored in fp16; rejoin with `python scripts/pack_checkpoint.py unpack
# DIR model.pt [--name main|control]`), training.json, run.log, train.log and eval.json.
#
#   OUT=/tmp/out scripts/train_default_gpu.sh [extra lantern-edge train flags]
#
# Environment:
#   OUT        required: the folder that comes back
#   CORPUS     a prepared corpus directory (`lantern-edge corpus ... -o DIR`), a .tar.gz of one
#              (default runs/closure-corpus.tar.gz), or "closure" to build it in the run with
#              --offline-corpus closure (needs that flag and the installed closure there)
#   PRESET     default recipe
#   CONTROL_PRESET  default recipe-control; empty: no control run
#   CONTROL_FLAGS   extra train flags for the control (e.g. its --max-minutes)
#   TOKENIZER  default the shipped model's tokenizer.json (old and new models then compare
#              token for token)
#   BUDGET_S   wall seconds for the whole script (default 540); the eval runs only in what is
#              left, under `timeout`
#   EVAL_TOKENS  default 2048
#   PYTHON     default python3
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder whose files come back}"
PRESET=${PRESET:-recipe}
CORPUS=${CORPUS:-runs/closure-corpus.tar.gz}
TOKENIZER=${TOKENIZER:-lantern_edge/default_model/tokenizer.json}
BUDGET_S=${BUDGET_S:-540}
EVAL_TOKENS=${EVAL_TOKENS:-2048}
CONTROL_PRESET=${CONTROL_PRESET-recipe-control}
CONTROL_FLAGS=${CONTROL_FLAGS:-}
PY=${PYTHON:-python3}
START=$(date +%s)
WORK=$(mktemp -d)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT"
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/run.log"; }

log "$($PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no GPU)")')"
case "$CORPUS" in
  closure) corpus_flags=(--offline-corpus closure); eval_corpus=() ;;
  *.tar.gz)
    mkdir -p "$WORK/corpus"
    tar -xzf "$CORPUS" -C "$WORK/corpus" --strip-components=1
    corpus_flags=(--corpus "$WORK/corpus"); eval_corpus=(--corpus "$WORK/corpus") ;;
  *) corpus_flags=(--corpus "$CORPUS"); eval_corpus=(--corpus "$CORPUS") ;;
esac
vocab=$($PY -c 'import sys; from tokenizers import Tokenizer; print(Tokenizer.from_file(sys.argv[1]).get_vocab_size())' "$TOKENIZER")

common=("${corpus_flags[@]}" --tokenizer "$TOKENIZER" --vocab-size "$vocab")
if [ -n "$CONTROL_PRESET" ]; then
  # the equal-training-compute control, side by side on the same device for the same wall time
  log "control: train --preset $CONTROL_PRESET (in parallel) $CONTROL_FLAGS"
  # shellcheck disable=SC2086
  $PY -m lantern_edge.model.train_cli --preset "$CONTROL_PRESET" "${common[@]}" -q \
      -o "$WORK/control.pt" $CONTROL_FLAGS > "$WORK/control.log" 2>&1 &
  control_pid=$!
fi
log "train --preset $PRESET ${corpus_flags[*]} --tokenizer $TOKENIZER (vocab $vocab) $*"
# tqdm redraws with carriage returns: keep the log to whole lines, without the bar
if ! $PY -m lantern_edge.model.train_cli --preset "$PRESET" "${common[@]}" \
      -o "$WORK/model.pt" --main-output "$WORK/main.pt" "$@" 2>&1 \
      | tr '\r' '\n' | grep --line-buffered -v '%|' > "$OUT/train.log"; then
  log "training failed:"; tail -5 "$OUT/train.log" | tee -a "$OUT/run.log"; exit 1
fi
tail -1 "$OUT/train.log" | tee -a "$OUT/run.log"

log "pack the checkpoint"
$PY scripts/pack_checkpoint.py pack "$WORK/model.pt" "$OUT" | tee -a "$OUT/run.log"
# the model before the corrector and probe phases (fp16: it is only evaluated), to ablate them
[ -f "$WORK/main.pt" ] && $PY scripts/pack_checkpoint.py pack "$WORK/main.pt" "$OUT" --name main --half | tee -a "$OUT/run.log"

log "export + quantize (parity-checked)"
if $PY scripts/build_default_model.py "$WORK/model.pt" --out "$WORK/artifacts" > "$WORK/build.log" 2>&1; then
  grep -i "parity\|quality\|MB" "$WORK/build.log" | tail -6 | tee -a "$OUT/run.log"
else
  log "build failed (the checkpoint is in \$OUT: rebuild on CPU):"; tail -3 "$WORK/build.log" | tee -a "$OUT/run.log"
fi

if [ -n "$CONTROL_PRESET" ]; then
  if wait "$control_pid"; then
    tail -1 "$WORK/control.log" | tee -a "$OUT/run.log"
    $PY scripts/pack_checkpoint.py pack "$WORK/control.pt" "$OUT" --name control --half | tee -a "$OUT/run.log"
  else
    log "control failed:"; tail -3 "$WORK/control.log" | tee -a "$OUT/run.log"
  fi
fi

left=$(( BUDGET_S - ($(date +%s) - START) ))
if [ "$left" -gt 45 ]; then
  log "eval, ${left}s left: --tokens $EVAL_TOKENS ${eval_corpus[*]}"
  if timeout "$(( left - 15 ))" $PY -m lantern_edge.evaluation.cli --checkpoint "$WORK/model.pt" \
      "${eval_corpus[@]}" --tokens "$EVAL_TOKENS" --retrieval-examples 8 --threads "$(nproc)" \
      --no-figures -q -o "$WORK/eval" >> "$OUT/run.log" 2>&1; then
    cp "$WORK/eval/eval.json" "$OUT/eval.json"
    $PY -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["summary"]))' "$OUT/eval.json" | tee -a "$OUT/run.log"
  else
    log "eval did not finish in the time left (run it on CPU from the checkpoint)"
  fi
else
  log "no time left for the eval (run it on CPU from the checkpoint)"
fi
log "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
