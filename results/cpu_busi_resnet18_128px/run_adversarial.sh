#!/usr/bin/env bash
# Adversarial-training evidence on BUSI, ResNet-18 at 128 px on 2 CPU cores (issue 6).
#
# Needs runs/busi_baseline_cpu (the standard plain classifier of README.md's commands).
# Every step is skipped when its output already exists, so an interrupted chain resumes:
#
#   nohup bash results/cpu_busi_resnet18_128px/run_adversarial.sh > runs/adversarial.log 2>&1 &
#
# The adversarially trained runs use 20 epochs (the standard run 40) and the fine-tuning
# runs 5 to fit a session on 2 cores: PGD-7 costs about 4x a standard step
# (bench/adv_train_step.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=results/cpu_busi_resnet18_128px
timed() { /usr/bin/time -v "$@"; }

train() {  # train VARIANT WORKDIR [flags...]
  local variant=$1 workdir=$2; shift 2
  [[ -e $workdir/test_metrics.json ]] && { echo "skip $workdir"; return; }
  timed $PY train.py --config="configs/busi_adversarial.py:$variant" --workdir="$workdir" "$@"
}

train pgd,cpu runs/busi_pgd_cpu --config.num_epochs=20
train finetune,cpu runs/busi_pgd_ft_cpu --config.init_from=runs/busi_pgd_cpu --config.num_epochs=5

ATTACKS="({'name':'fgsm'},{'name':'bim','steps':10,'step_size_factor':0.25},{'name':'pgd','steps':10,'step_size_factor':0.25})"
sweep() {  # sweep WORKDIR CHECKPOINTS: accuracy against eps (FGSM, BIM-10, PGD-10); resumes
  grep -qs '"complete": true' "$1/results.json" && { echo "skip $1"; return; }
  timed $PY attack.py --config=configs/attack_sweep.py:cpu --config.checkpoints="$2" \
      --config.attacks="$ATTACKS" --workdir="$1"
}
sweep runs/sweep_adversarial runs/busi_baseline_cpu,runs/busi_pgd_cpu,runs/busi_pgd_ft_cpu

train first_layers,cpu runs/busi_first_cpu --config.init_from=runs/busi_baseline_cpu \
    --config.num_epochs=5
train transplant,cpu runs/busi_transplant_cpu --config.init_from=runs/busi_baseline_cpu \
    --config.transplant_from=runs/busi_pgd_cpu --config.num_epochs=5

# Saliency of standard vs robust models (skin-cancer study): sharpness, coherence, lesion energy.
if [[ ! -e runs/explain_adversarial/summary.md ]]; then
  timed $PY explain.py --config=configs/explain.py \
      --config.checkpoints=runs/busi_baseline_cpu,runs/busi_pgd_cpu,runs/busi_pgd_ft_cpu,runs/busi_first_cpu,runs/busi_transplant_cpu \
      --config.batch_size=32 --config.smoothgrad_samples=8 --config.faithfulness=False \
      --config.methods="('gradient','smoothgrad','grad_cam')" --workdir=runs/explain_adversarial
fi

# Iterative adversarial training (the oncology study's remedy).
train iterative,cpu runs/busi_iter_cpu --config.num_epochs=20
sweep runs/sweep_iterative runs/busi_iter_cpu
echo "chain done"
