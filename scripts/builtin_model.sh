#!/usr/bin/env bash
# How the built-in model `builtin:duo-bigtxt-dcd` was made, and how its few-step quality was
# measured (2-core CPU: about 55 min of training, 10 of distillation, 10 of evaluation).
#   bash scripts/builtin_model.sh [work dir]      (needs the judge extra for step 4)
set -euo pipefail
W=${1:-outputs/builtin}
OUT=src/duolm/pretrained/duo-bigtxt-dcd
RES=benchmarks/results/builtin
mkdir -p "$W" "$RES"

if [ -z "${SKIP_TRAINING:-}" ]; then   # SKIP_TRAINING=1: only steps 3-4, on models already in $W
# 1. Duo with the curriculum on the built-in corpus (the quick-start run, longer, cosine decay)
duolm train run.dir="$W/base" trainer.max_steps=1400 trainer.max_minutes=55 optim.schedule=cosine \
    algo.curriculum.end=300 trainer.enable_progress_bar=false sampling.num_samples=4

# 2. Discrete Consistency Distillation: 5 rounds of 60 steps, delta = 1/64 doubling to 16/64
duolm distill eval.checkpoint_path="$W/base/model" run.dir="$W/dcd" distill.T=64 \
    distill.update_teacher_every=60 trainer.max_steps=300 trainer.max_minutes=30 optim.lr=3e-4 \
    optim.warmup_steps=0 training.ema=0.99 distill.gamma_min=-3.5 distill.gamma_max=4.0 \
    trainer.val_check_interval=100 trainer.enable_progress_bar=false sampling.num_samples=4
fi

# 3. ship it in float16 (half the bytes; read back as float32)
duolm convert eval.checkpoint_path="$W/dcd/model" convert.output="$OUT" convert.dtype=float16

# 4. likelihood and few-step samples of teacher and student, judged by SmolLM2
for m in base dcd; do
    path="$W/$m/model"; [ "$m" = dcd ] && path="$OUT"
    duolm eval eval.checkpoint_path="$path" run.dir="$W/$m" eval.time_samples=4
    cp "$W/$m/eval.json" "$RES/$m-likelihood.json"
    for steps in 4 8 16 32 128; do
        duolm sample eval.checkpoint_path="$path" sampling.steps=$steps sampling.num_samples=64 \
            sampling.batch_size=64 sampling.print=0 sampling.output="$RES/$m-$steps.json"
    done
done
duolm eval "eval.samples=[$(ls $RES/base-[0-9]*.json $RES/dcd-[0-9]*.json | grep -v eval | paste -sd, -)]" \
    eval.judge=smollm2 eval.scoring_model="$W/base/model" eval.time_samples=8
duolm plot $RES/*.eval.json plot.output=$RES/few_step.png
