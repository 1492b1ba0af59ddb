#!/usr/bin/env bash
# Reproduce the paper's qualitative findings at CPU scale, one example after another (~6-8 min on
# one free core). Usage: examples/run_all.sh [OUT] [--tiny], in either order   (OUT defaults to runs/examples)
# Each example writes OUT/<name>/{*.fdl.h5, <name>.png, plots_*/, outcome.json} and prints its numbers;
# docs/findings.md records them beside the paper's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# OUT is the one argument that is not an option, before or after them (`run_all.sh --tiny` is the quick
# run). --tiny is the one option every example takes; any other (label_shuffle.py's --n-train N: its N would
# be taken for OUT) and a second folder are refused before anything runs: run that example alone for those.
usage="usage: examples/run_all.sh [OUT] [--tiny]   (OUT defaults to runs/examples; an example's own options: run it alone, docs/findings.md)"
out=""
options=()
for arg in "$@"; do
    case "${arg}" in
        --tiny) options+=("${arg}") ;;
        -*) printf "run_all.sh: unknown option '%s'\n%s\n" "${arg}" "${usage}" >&2; exit 2 ;;
        *)
            if [[ -n "${out}" ]]; then
                printf "run_all.sh: two folders given, '%s' and '%s'\n%s\n" "${out}" "${arg}" "${usage}" >&2
                exit 2
            fi
            out="${arg}" ;;
    esac
done
out="${out:-runs/examples}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# the examples run `python`: the one on PATH must be fdl's environment (a shell that has not activated it
# would run each example into a ModuleNotFoundError)
if ! python -c "import torch, sklearn, fdl_cli" 2>/dev/null; then
    echo "run_all.sh: $(command -v python || echo python) cannot import torch, sklearn and fdl_cli: activate the" \
         "environment fdl is installed in, with the dev extras (README: pip install -e \".[dev]\")" >&2
    exit 1
fi
for name in rich_vs_lazy label_shuffle batchnorm grokking; do
    echo "=== ${name} ==="
    python "${here}/${name}.py" --out "${out}/${name}" ${options[@]+"${options[@]}"}
done
echo "outcomes:"
for name in rich_vs_lazy label_shuffle batchnorm grokking; do
    printf '%-14s reproduced: ' "${name}"
    python -c "import json,sys; print(json.load(open(sys.argv[1]))['reproduced'])" "${out}/${name}/outcome.json"
done
