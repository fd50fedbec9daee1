#!/usr/bin/env bash
# Everything GPU-related in one call of the device tool: the gpu-marked tests, the CUDA benchmark
# table and a cuda_graph run of train.py. Sized for about 5 minutes on one H100 after start-up.
#
# Prepare once on the CPU machine, in the repository root (the GPU machine has torch, lightning
# and torchmetrics but no hydra-core and no pytest; antlr4 comes only as source, so it is built):
#   mkdir -p .whl && grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps -d .whl hydra-core==1.3.8 omegaconf==2.3.1 pytest iniconfig pluggy
#   python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
# Then run it with the device tool: command `bash benchmarks/gpu_check.sh`, carry [".whl"].
# Its results come back under $OUT: gpu.txt, pytest-gpu.txt, bench-cuda.txt, train-cuda-graph.txt.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/.site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/gpu.txt"

# The GPU tests (parity of every update path on the GPU, CPU vs GPU bounds, cuda_graph refusals).
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_parity.py tests/test_reference.py tests/test_stacked.py \
    2>&1 | tail -25 | tee "$OUT/pytest-gpu.txt"

# The benchmark: raw loop, raw CUDA graph and the package's three paths, side by side.
timeout 300 python3 benchmarks/bench.py --device cuda --repeats 3 --target-seconds 0.5 2>&1 \
    | grep -v "Warning\|warn(" | tee "$OUT/bench-cuda.txt"

# The command line with the fast path: the seed's default run, final loss printed.
timeout 60 python3 train.py trainer.accelerator=gpu trainer.update_path=cuda_graph logger=none \
    "output_dir=$OUT/run" 2>&1 | tail -3 | tee "$OUT/train-cuda-graph.txt"
