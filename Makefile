# The README's two commands: `make serve` (run the daemon) and `make test` (run the tests).
# Both set up .venv first. torch is installed on its own, pinned, before anything else, so
# that nothing later can pull a different (multi-GB CUDA) build onto a CPU machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=

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
	$(PY) -m pytest $(PYTEST_ARGS)

# Debian's hydrogen-drumkits: the training and evaluation data of the default model (143 MB).
data:
	@test -d /usr/share/hydrogen/data/drumkits || (apt-get update -qq && apt-get install -y -qq --no-install-recommends hydrogen-drumkits)

# Retrain the shipped default: 1200 steps at batch 128 (2.8 minutes on an H100, which --device
# auto uses when torch sees it; an estimated 3 hours on 2 CPU cores). Resumes from runs/default/checkpoint.pt.
train-default: setup data
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/genbridge train /usr/share/hydrogen/data/drumkits -o runs/default --steps 1200 --batch 128 --lr 2e-4 --balance 1 --default-steps 8 --snapshot-every 400 --lowpass kick=8000 --name default

bench: setup system-deps data
	$(PY) bench/drum_quality.py --sheet bench/results/default_sheet.png
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
