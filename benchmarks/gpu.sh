#!/bin/bash
# The GPU checks of docs/benchmarks.md ("On a GPU") in one go: the CUDA tests, the overhead
# benchmarks (GPT-2-small under bf16 autocast; the MLP, CNN and ResNet-50 with the peers; the
# matrix in Cockpit's format) and the whole suite. Logs and tables go to $1 (default gpu-results/).
# The peers (wandb, Cockpit) are used where installed; the suite needs pytest-xdist and
# pytest-timeout.
set -u
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1  # one thread per test worker: 16 workers oversubscribe
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_sync.py > "$out/cuda-tests.log" 2>&1
tail -1 "$out/cuda-tests.log"
python benchmarks/overhead.py --device cuda --models gpt2-small --autocast bf16 --rounds 5 > "$out/gpt2-small.md" 2>&1
python benchmarks/overhead.py --device cuda --models mlp,cnn,resnet50 --rounds 5 > "$out/small-models.md" 2>&1
python benchmarks/overhead.py --device cuda --models mlp,cnn --rounds 3 --matrix > "$out/matrix.md" 2>&1
grep -h "^|" "$out/gpt2-small.md" "$out/small-models.md" "$out/matrix.md"
python -m pytest -q -n 12 --timeout 90 -p no:cacheprovider > "$out/suite.log" 2>&1
tail -1 "$out/suite.log"
