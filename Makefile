# Two commands: `make demo` runs the main job on the embedded default, `make test` the tests.
# Each creates .venv with the pinned dependencies on first use and reuses it afterwards.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
WORKDIR ?= runs/demo

.PHONY: demo test test-slow gpu-pack lock clean-venv

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/python train.py --config=configs/default.py --workdir=$(WORKDIR)
	$(BIN)/python attack.py --config=configs/attack_sweep.py:quick --config.checkpoints=$(WORKDIR) \
	    --workdir=$(WORKDIR)/attack
	$(BIN)/python explain.py --config=configs/explain.py:quick --config.checkpoints=$(WORKDIR) \
	    --workdir=$(WORKDIR)/explain
	@echo "Demo outputs in $(WORKDIR): report.md, training_curves.png, test_predictions.png;"
	@echo "attack sweep in $(WORKDIR)/attack: report.md, results.csv, accuracy_vs_eps.png, explanation.md,"
	@echo "  spearman_vs_eps.png, examples_*.png (examples_*grad_cam-keep*: Grad-CAM before/after the attack);"
	@echo "explanations in $(WORKDIR)/explain: report.md, summary.csv, maps_*.png"

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests

# The folder a lent GPU machine gets (docs/SCALING.md, "On a lent GPU"): wheels + data in .carry/gpu
gpu-pack: $(STAMP)
	$(BIN)/python bench/gpu/pack.py

lock:
	$(BIN)/python -m pip freeze --exclude-editable > requirements.lock

clean-venv:
	rm -rf $(VENV)
