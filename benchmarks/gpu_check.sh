#!/usr/bin/env bash
# The one prepared script for a CUDA machine (run it whenever one is lent):
#   bash benchmarks/gpu_check.sh            # from the repository root
# Installs the package if needed, then runs the GPU checks and prints their RESULT lines.
# Each section is guarded by what it needs, so it also runs on a single GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if ! $PY -c "import trainyard" 2>/dev/null; then
  $PY -m pip install -q -e . || exit 1
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L || { echo "no CUDA device: nothing to check"; exit 0; }
GPUS=$(nvidia-smi -L | wc -l)
OUT=${OUT:-/tmp/trainyard-gpu}
mkdir -p "$OUT"

# --- issue 2: default job and overhead on cuda, bf16 and fp16, pinned memory ---------------
for prec in bf16 fp16; do
  echo "== default job, cuda, precision=$prec"
  $PY -m trainyard train name=gpu-default-$prec track.root="$OUT/runs" trainer.device=cuda trainer.precision=$prec loader.pin_memory=true trainer.progress=false | tail -3
done
for prec in bf16 fp16; do
  echo "== overhead benchmark, cuda, precision=$prec"
  $PY benchmarks/overhead.py --device cuda --precision $prec --repeats 5 | grep -E "RESULT|ratio"
done

echo "== CUDA tests (tests/integration/test_cuda.py: cuda and multi_gpu markers)"
$PY -m pip install -q pytest pytest-timeout 2>/dev/null
$PY -m pytest -q -m "cuda or multi_gpu" tests/integration/test_cuda.py 2>&1 | tail -3

# --- issue 5: text models on cuda (packed RNNs, padding masks, bucketing) under bf16 -------
SMS=${SMS:-../shared/data/sms_spam/SMSSpamCollection}
if [ -f "$SMS" ]; then
  for model in embedding_bag gru lstm transformer; do
    echo "== text, $model, cuda, precision=bf16"
    $PY -m trainyard train name=gpu-text-$model track.root="$OUT/runs" data.dataset=text data.path="$SMS" data.columns=[label,text] \
      model.name=$model model.bidirectional=true model.width=64 loader.bucket_by_length=true trainer.epochs=3 \
      trainer.device=cuda trainer.precision=bf16 trainer.progress=false | tail -2
  done
fi

# --- issue 6: data parallel (ddp spawn and torchrun, dp) -------------------------------------
if [ "$GPUS" -gt 1 ]; then
  echo "== ddp, 2 GPUs, spawned"
  $PY -m trainyard train name=gpu-ddp track.root="$OUT/runs" parallel.strategy=ddp parallel.devices=2 trainer.epochs=3 trainer.progress=false | tail -3
  echo "== ddp, 2 GPUs, torchrun"
  $PY -m torch.distributed.run --standalone --nproc_per_node=2 -m trainyard train name=gpu-ddp-torchrun track.root="$OUT/runs" parallel.strategy=ddp trainer.epochs=3 trainer.progress=false | tail -3
  echo "== dp, 2 GPUs"
  $PY -m trainyard train name=gpu-dp track.root="$OUT/runs" parallel.strategy=dp parallel.devices=2 trainer.epochs=3 trainer.progress=false | tail -3
  echo "== ddp scaling, 1 GPU against 2"
  $PY benchmarks/ddp_scaling.py --device cuda --repeats 3 | grep -E "RESULT|samples/s"
else
  echo "== ddp on one GPU (an nccl group of one) and dp falling back to single"
  $PY -m trainyard train name=gpu-ddp1 track.root="$OUT/runs" parallel.strategy=ddp parallel.devices=1 trainer.epochs=2 trainer.progress=false | tail -3
  $PY -m trainyard train name=gpu-dp1 track.root="$OUT/runs" parallel.strategy=dp trainer.epochs=2 trainer.progress=false 2>&1 | grep -E "warning|test accuracy"
fi
# --- issue 7: model and pipeline parallelism over 2 GPUs (skipped on one GPU) ------------------
if [ "$GPUS" -gt 1 ]; then
  echo "== model parallel, cuda:0 + cuda:1 (default job)"
  $PY -m trainyard train name=gpu-model-parallel track.root="$OUT/runs" parallel.strategy=model parallel.devices=[cuda:0,cuda:1] trainer.epochs=3 trainer.progress=false | tail -4
  echo "== pipeline, 2 GPUs, nccl, 1f1b"
  $PY -m trainyard train name=gpu-pipeline track.root="$OUT/runs" model.name=mlp parallel.strategy=pipeline parallel.devices=2 parallel.schedule=1f1b parallel.microbatches=4 trainer.epochs=3 trainer.progress=false | tail -4
  echo "== pipeline benchmark, 2 GPUs: naive model parallel vs GPipe M=1,2,4,8"
  $PY benchmarks/pipeline.py --device cuda --width 4096 --layers 16 --batch 1024 | grep -E "RESULT|variant|naive|gpipe"
else
  echo "== issue 7 (model/pipeline parallel): needs 2 GPUs, found $GPUS: skipped"
fi
# --- end issue 7 --------------------------------------------------------------------------------

# --- issue 15: the user's own model, data and task on cuda (bf16 autocast with regression targets, a multilabel head) ---
echo "== built-in diabetes regression, mlp, cuda, bf16"
$PY -m trainyard train name=gpu-regression track.root="$OUT/runs" data.dataset=diabetes task=regression model.name=mlp \
  trainer.device=cuda trainer.precision=bf16 trainer.epochs=5 optim.lr=0.03 trainer.progress=false | tail -2
echo "== Python API on cuda: trainyard.fit on a user model (examples/python_api)"
if [ -f examples/python_api/train.py ]; then
  (cd examples/python_api && $PY train.py 2>&1 | tail -3)  # trainer.device=auto picks cuda
fi

# --- issue 16: faults on cuda: a signal in the final test, a save past a file-size limit, divergence -----------
echo "== SIGTERM during the final test on cuda: exit 143, status interrupted, --resume runs the test"
$PY -m trainyard train name=gpu-sig track.root="$OUT/runs" trainer.device=cuda trainer.epochs=1 trainer.progress=false &
pid=$!; while [ ! -f "$OUT/runs/gpu-sig/checkpoints/last.pt" ] && kill -0 $pid 2>/dev/null; do sleep 0.05; done
kill -TERM $pid 2>/dev/null; wait $pid; echo "exit $?"
grep -E '"status"|"reason"' "$OUT/runs/gpu-sig/status.json"
$PY -m trainyard train --resume "$OUT/runs/gpu-sig" 2>&1 | grep -E "test accuracy|error"
echo "== a save past ulimit -f on cuda: one line, last.pt kept, status failed"
$PY -m trainyard train name=gpu-full track.root="$OUT/runs" trainer.device=cuda trainer.epochs=1 track.images=false track.graph=false trainer.progress=false | tail -1
(ulimit -f 100; $PY -m trainyard train --resume "$OUT/runs/gpu-full" trainer.epochs=2 2>&1 | tail -1; echo "exit $?")
grep -E '"status"' "$OUT/runs/gpu-full/status.json"
echo "== divergence on cuda under fp16: stops with one line, status diverged"
$PY -m trainyard train name=gpu-nan track.root="$OUT/runs" trainer.device=cuda trainer.precision=fp16 optim.name=sgd optim.lr=1e6 trainer.epochs=3 trainer.progress=false 2>&1 | tail -1
grep -E '"status"' "$OUT/runs/gpu-nan/status.json"
# --- end issue 16 ----------------------------------------------------------------------------------------------

# --- issue 20: CUDA defaults and trainer.compile on cuda ---------------------------------------------------------
echo "== start line on cuda, CNN: expect tf32, cudnn.benchmark, channels_last (and pin_memory on the DataLoader path)"
$PY -m trainyard train name=gpu-defaults track.root="$OUT/runs" trainer.device=cuda model.name=cnn trainer.epochs=1 loader.batched=false \
  trainer.progress=false | grep -E "^trainyard: .*training samples|test accuracy"
echo "== the same under trainer.deterministic: none of tf32, cudnn.benchmark"
CUBLAS_WORKSPACE_CONFIG=:4096:8 $PY -m trainyard train name=gpu-deterministic track.root="$OUT/runs" trainer.device=cuda model.name=cnn trainer.epochs=1 \
  trainer.deterministic=true trainer.progress=false | grep -E "^trainyard: .*training samples|test accuracy"
for mode in default max-autotune-no-cudagraphs; do
  echo "== trainer.compile=$mode on cuda, CNN, bf16 (no fallback warning expected)"
  $PY -m trainyard train name=gpu-compile-$mode track.root="$OUT/runs" trainer.device=cuda model.name=cnn trainer.epochs=2 \
    trainer.compile=$mode trainer.precision=bf16 trainer.progress=false 2>&1 | grep -E "compile|^epoch|test accuracy"
done
if [ "$GPUS" -gt 1 ]; then
  for strategy in ddp fsdp; do
    echo "== trainer.compile=true under $strategy, 2 GPUs"
    $PY -m trainyard train name=gpu-compile-$strategy track.root="$OUT/runs" parallel.strategy=$strategy parallel.devices=2 model.name=cnn \
      trainer.epochs=2 trainer.compile=true trainer.progress=false 2>&1 | grep -E "compile|^epoch|test accuracy"
  done
fi
echo "== batched in-memory loader on cuda against the naive raw loop (target >= 1.3; the CPU CNN misses it, RESULTS.md)"
$PY benchmarks/overhead.py --sides batched --device cuda --repeats 3 | grep -E "RESULT|ratio"
echo "== MNIST time to 99% (the trainyard side on cuda, the plain script as published, on the CPU)"
if [ -d ../shared/data/MNIST ]; then
  $PY benchmarks/time_to_accuracy.py --repeats 1 | grep -E "RESULT|run 0"
fi
echo "== CIFAR-10 time to 94% (airbench-like network, training set resident on the GPU, batched augmentation, bf16)"
echo "   anchor: airbench94, 94% in 2.6 s on an A100 (arXiv 2404.00498); CIFAR_ROOT must hold cifar-10-batches-py/ for the full set"
$PY benchmarks/cifar10_speedrun.py --root "${CIFAR_ROOT:-../shared/data}" --set trainer.device=cuda trainer.precision=bf16 | grep -E "RESULT|epoch|data:"
$PY benchmarks/cifar10_speedrun.py --root "${CIFAR_ROOT:-../shared/data}" --set trainer.device=cuda trainer.precision=bf16 \
  trainer.compile=max-autotune-no-cudagraphs | grep -E "RESULT|data:"
# --- end issue 20 ------------------------------------------------------------------------------------------------
