# The README's two commands: `make serve` (run the daemon) and `make test` (run the tests).
# Both set up .venv first. torch is installed on its own, pinned, before anything else, so
# that nothing later can pull a different (multi-GB CUDA) build onto a CPU machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist). Most tests wait on a daemon, a JACK server or a Ray cluster, not
# on the CPU, so two processes halve the suite on a 2-core machine (docs/ARCHITECTURE.md, "Measured
# reasons"); tests marked machine_wide (Ray, Link, the Pd patches) share state of the machine and
# take turns on a lock (tests/conftest.py). PYTEST_WORKERS=0 runs everything in one (for -s, --pdb).
PYTEST_WORKERS ?= 2

.PHONY: setup serve test system-deps bench data train-default screenshot

$(VENV)/.installed: pyproject.toml requirements/no-deps.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e '.[test,ray]'
	$(PIP) install -q --no-deps -r requirements/no-deps.txt
	touch $@

setup: $(VENV)/.installed

serve: setup
	$(VENV)/bin/genbridge serve $(ARGS)

system-deps:
	bash .ci/system-deps.sh

test: setup system-deps
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The default model's training and evaluation data, all from Debian packages (about 460 MB):
# hydrogen-drumkits, lmms-common's and sonic-pi-samples' drum one-shots, and the drum kits of the
# General MIDI soundfonts, rendered with fluidsynth at four velocities into data/drums
# (models/drum_sources.py); hydrogen-data's kits and avldrums.lv2-soundfont's AVL fonts for
# evaluation only (held out). Installs only what is missing; renders only kits not yet rendered.
DATA_PACKAGES := hydrogen-drumkits hydrogen-data avldrums.lv2-soundfont lmms-common sonic-pi-samples \
	fluid-soundfont-gm fluid-soundfont-gs musescore-general-soundfont timgm6mb-soundfont fluidsynth
data: setup
	@missing=$$(for p in $(DATA_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	--no-install-recommends $$missing; fi
	$(VENV)/bin/genbridge data -o data/drums

# Retrain the shipped default (models/default/MODEL_CARD.md), in two resumable stages on 2 CPU cores
# (a progress bar on a terminal, a log line a minute otherwise):
# 1. grown from the previous default (models/drums-v1) by --transfer, 6000 steps at batch 8 on
#    companded audio (about 80 minutes), into runs/default-base;
# 2. fine-tuned from that with the high-frequency emphasis (--emphasis 4: hiss under kicks),
#    FINETUNE_STEPS more steps at half the learning rate, into runs/default.
TRAIN_STEPS ?= 6000
FINETUNE_STEPS ?= 4000
TRAIN_ARGS := /usr/share/hydrogen/data/drumkits data/drums --amplitude-power 0.5 --batch 8 --balance 1 \
	--default-steps 8 --snapshot-every 500 --checkpoint-minutes 4 --threads 2 --name default
train-default: setup data
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/genbridge train $(TRAIN_ARGS) -o runs/default-base \
		--transfer models/drums-v1 --steps $(TRAIN_STEPS) --lr 2e-4
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/genbridge train $(TRAIN_ARGS) -o runs/default \
		--init runs/default-base/model --emphasis 4 --steps $(FINETUNE_STEPS) --lr 1e-4

bench: setup system-deps data
	$(PY) bench/drum_quality.py --sheet bench/results/default_sheet.png
	$(PY) bench/drum_hiss.py
	$(PY) bench/drum_classifier.py
	$(PY) bench/bf16_kernels.py
	$(PY) bench/trigger_reply.py --backends local,ray
	$(PY) bench/remote.py
	$(PY) bench/oneshot.py
	$(PY) bench/trigger_to_sound.py
	$(PY) bench/oneshot_throughput.py
	$(PY) bench/fresh_ratio.py
	$(PY) bench/continuation.py

# The README's picture of the web console, made by its browser test (headless Chromium).
screenshot: setup system-deps
	GENBRIDGE_SCREENSHOT=$(CURDIR)/docs/console.png $(PY) -m pytest -q tests/test_web_console.py -k pad_adds
