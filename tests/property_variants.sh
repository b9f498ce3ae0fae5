#!/usr/bin/env bash
# The tests whose assertions depend on a trained model (the 16-epoch tiny fixture of
# tests/conftest.py), run under several seeds and floating-point orders; prints each
# property's margin per variant (the lines "MARGIN ..."). Thresholds in the tests sit
# below the smallest margin seen here (issue 28). About 3 minutes per variant on 2 cores.
#   bash tests/property_variants.sh                # all variants
#   bash tests/property_variants.sh seed=3 eigen1  # some
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TESTS=(tests/test_adversarial.py::test_pgd_training_raises_accuracy_under_attack
       tests/test_explanation_attacks.py::test_grad_cam_attack_beats_noise)
BASE="--xla_force_host_platform_device_count=8"
variants=("$@")
[[ ${#variants[@]} -eq 0 ]] && variants=(seed=0 seed=1 seed=2 seed=3 seed=4 eigen1 highest devices1)
for v in "${variants[@]}"; do
  seed=0; flags=$BASE; precision=""
  case $v in
    seed=*) seed=${v#seed=} ;;
    eigen1) flags="$BASE --xla_cpu_multi_thread_eigen=false" ;;   # another summation order
    highest) precision=highest ;;                                 # JAX_DEFAULT_MATMUL_PRECISION
    devices1) flags="--xla_force_host_platform_device_count=1" ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
  echo "== variant $v"
  env MEDROBUST_TEST_SEED=$seed XLA_FLAGS="$flags" ${precision:+JAX_DEFAULT_MATMUL_PRECISION=$precision} \
    $PY -m pytest -q -s -p no:randomly "${TESTS[@]}" 2>&1 | grep -oE "MARGIN.*|[0-9]+ (passed|failed).*|[A-Za-z]*Error.*"
done
