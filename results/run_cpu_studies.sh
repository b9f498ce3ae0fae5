#!/usr/bin/env bash
# The CPU-scale studies in the order this machine (2 cores) runs them: the first repetition
# (seed 0, all 5 folds) of every study before the second, so that each study has a complete
# cross-validation as early as possible. Every step resumes where it stopped (finished runs
# and evaluations are kept; repetitions committed under results/ are not redone even on a
# fresh machine), so the script can be started again after an interruption:
#
#   nohup nice -n 10 bash results/run_cpu_studies.sh >> runs/cpu_studies.log 2>&1 &
#
# Each summary writes every evaluated run to results/<study>/per_image_*.csv: commit them
# after each session, a fresh machine resumes from there. Each summary is written with the
# study's own configuration (both seeds), so its README
# says how many repetitions are complete and which runs are still missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

# Cheapest first (seed 0 wall times: study 2 on brain MRI 0.9 h, study 3 on brain MRI about
# 1 h, study 2 on BUSI 2.2 h, studies 3+4 on BUSI 2.5 h, study 1 4.5 h), so that the second
# repetitions complete as early as possible.
STUDIES=(
  "oncology_robustness.py:brain_mri_cpu study_oncology_robustness_brain_mri_cpu"
  "robust_saliency.py:brain_mri_cpu study_robust_saliency_brain_mri_cpu"
  "oncology_robustness.py:busi_cpu study_oncology_robustness_busi_cpu"
  "robust_saliency.py:cpu study_robust_saliency_cpu"
  "robust_gradcam.py:cpu study_robust_gradcam_cpu"
  "busi_gradcam.py:cpu study_busi_gradcam_cpu"
)

# Is study 4's 10-step Grad-CAM attack strong enough? 5x the steps, Adam steps and restarts
# on the standard and the PGD-AT model of one fold (while study 3's runs are on this machine).
attack_strength_check() {
  local runs=runs/study_robust_saliency_cpu out=results/robust_gradcam_cpu/attack_strength
  if [[ -s $out/report.md || ! -e $runs/pgd/seed1_fold0/test_metrics.json ]]; then return; fi
  echo "=== $(date -u +%FT%TZ) attack strength check -> $out"
  "$PY" attack.py --config=configs/attack_sweep.py:strength --workdir="$out" \
    --config.checkpoints="$runs/standard/seed1_fold0,$runs/pgd/seed1_fold0"
}

# One pass of one study over some of its seeds ("(0,)"), then its summary of all of them.
run_study() {
  local config=$1 workdir=$2 seeds=$3
  echo "=== $(date -u +%FT%TZ) $config seeds $seeds"
  "$PY" study.py --config="configs/studies/$config" --workdir="runs/$workdir" \
    --config.seeds="$seeds" --config.stages="('train', 'evaluate')" || return
  "$PY" study.py --config="configs/studies/$config" --workdir="runs/$workdir" \
    --config.stages="('summarise',)"
}

# This round's studies (issues 23 and 24), instead of the above (which are complete):
# AutoAttack on study 2's BUSI runs, the robust-saliency study on HAM10000 and study 3's
# pre-specified follow-up (seeds 2 and 3), every first repetition before the second:
#   nohup nice -n 5 bash results/run_cpu_studies.sh round >> runs/cpu_studies.log 2>&1 &
# (The AutoAttack study's seed 0 is committed, so its first pass does seed 1 too: issue 23
# closes first.) A pass can outlast a session, whose end stops this script and loses
# runs/; so while a study runs its summary is rewritten every SUMMARY_EVERY seconds and
# every run evaluated so far reaches results/ (commit it), never to be redone.
SUMMARY_EVERY=${SUMMARY_EVERY:-1200}
ROUND=(
  "oncology_autoattack.py:busi_cpu study_oncology_autoattack_busi_cpu (0,1) (0,1)"
  "robust_saliency_ham10000.py:cpu study_robust_saliency_ham10000_cpu (0,) (0,1)"
  "robust_saliency_last.py:cpu study_robust_saliency_last_cpu (2,) (2,3)"
)
if [[ ${1:-} == round ]]; then
  # Another study.py on these cores (e.g. one started by hand) finishes first.
  while pgrep -f "study.py --config" > /dev/null; do sleep 60; done
  for pass in 0 1; do
    for entry in "${ROUND[@]}"; do
      read -r config workdir first both <<< "$entry"
      # Summaries need no work-dir lock: they only read the finished evaluations.
      (while sleep "$SUMMARY_EVERY"; do
         "$PY" study.py --config="configs/studies/$config" --workdir="runs/$workdir" \
           --config.stages="('summarise',)" --progress=false > /dev/null 2>&1 &&
           echo "=== $(date -u +%FT%TZ) $config summarised so far"
       done) &
      summariser=$!
      # One study that stops (an error, a refused setting) does not stop the others.
      run_study "$config" "$workdir" "$([[ $pass == 0 ]] && echo "$first" || echo "$both")" ||
        echo "=== $(date -u +%FT%TZ) $config FAILED (exit $?): see above; continuing"
      kill "$summariser" 2> /dev/null || true
    done
  done
  exit 0
fi

for seeds in "(0,)" "(0, 1)"; do
  for entry in "${STUDIES[@]}"; do
    read -r config workdir <<< "$entry"
    run_study "$config" "$workdir" "$seeds"
    if [[ $config == robust_gradcam.py:cpu ]]; then attack_strength_check; fi
  done
done

# Study 1's top-k / centre-of-mass / targeted attacks at every eps, on its seed-1 runs
# (configs/studies/busi_gradcam_map_attacks.py; about 40 min, no training).
run_study busi_gradcam_map_attacks.py:cpu study_busi_gradcam_map_attacks_cpu "(1,)"

# Study 3's pre-specified follow-up (PGD-AT keeping its last checkpoint, fresh seeds 2 and 3;
# configs/studies/robust_saliency_last.py), once every study above is complete. About 1.5 h
# per seed (standard and PGD-AT, 5 folds).
for seeds in "(2,)" "(2, 3)"; do
  run_study robust_saliency_last.py:cpu study_robust_saliency_last_cpu "$seeds"
done
