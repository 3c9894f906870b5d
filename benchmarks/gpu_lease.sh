#!/bin/bash
# One lent GPU machine's whole command (about 6 minutes on one H200): the GPU profile's quality grid and
# benchmarks.gpu_check, on a bare image (torch, transformers, pyarrow; no DVC, MLflow, polars or FAISS).
# Prepare here, then run it there with .gpu carried (benchmarks/README.md, "The GPU profile"):
#   python -m benchmarks.gpu_profile pack --model <base model folder> --dest .gpu/pack \
#     --projects benchmarks/results/dev/arxiv-multidomain-sample-all/project benchmarks/results/dev/arxiv-recent-sample-all/project
#   pip download (python 3.12, manylinux x86_64) into .gpu/whl: sentence-transformers, datasets, dill,
#     multiprocess, pydantic, pydantic_core, annotated-types, typing-inspection, typing_extensions (the .venv's versions)
#   .gpu/ is git-ignored: the device call names it in carry (64 MiB in all, the repository included)
# Results land in $OUT: gpu.json and the pick's int8 deltas (quality; with --test-vectors each candidate's test-text
# vectors instead), gpu_check.json, the logs.
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
GRID=${GRID:-objective}
CHECK=${CHECK:-1}  # 0: no benchmarks.gpu_check (the quality part alone: a seed spread with --test-vectors)
# Extra arguments for `gpu_profile run`, e.g. a seed spread of the profile, scored here by `gpu_profile score`:
#   CHECK=0 bash benchmarks/gpu_lease.sh --test-vectors --candidate 's42={}' --candidate 's1={"shared": {"seed": 1}}'
BUDGET_S=${BUDGET_S:-200}  # no candidate starts after this: the lease is 15 minutes, start-up included
wheels=(.gpu/whl/sentence_transformers-*.whl)  # the version the tests ran, over the image's own
python3 -c "import datasets" 2>/dev/null || wheels+=(.gpu/whl/datasets-*.whl .gpu/whl/dill-*.whl .gpu/whl/multiprocess-*.whl)
python3 -c "import pydantic" 2>/dev/null || wheels+=(.gpu/whl/pydantic*.whl .gpu/whl/annotated*.whl .gpu/whl/typing_*.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}" || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, transformers, sentence_transformers, datasets; print(torch.__version__, transformers.__version__, sentence_transformers.__version__, torch.cuda.get_device_name())" || exit 1
python3 -m benchmarks.gpu_profile widen --model .gpu/pack/model --dest /tmp/model || exit 1
projects=(.gpu/pack/*-all)
timeout 420 python3 -m benchmarks.gpu_profile run --model /tmp/model --projects "${projects[@]}" --out "$OUT" --parts quality \
  --grid "$GRID" --budget-s "$BUDGET_S" "$@" 2>&1 | grep -v -i warn | tee "$OUT/quality.log" | grep "gpu:\|Error\|chosen"
[ "$CHECK" = 0 ] || timeout 150 python3 -m benchmarks.gpu_check --model /tmp/model 2>&1 | grep -v -i warn | tee "$OUT/check.log" | grep "gpu_check:\|Error"
