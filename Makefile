# Two entry points for a newcomer: `make repro` (whole DAG) and `make test`. Both set up .venv.
VENV ?= .venv
PYTHON ?= python3
# CPU set-up pins torch's version (constraints.txt says how to get its CPU build from PyPI's platforms) and, through
# requirements.lock, every other package's; GPU users with their CUDA torch in .venv pass CONSTRAINTS=requirements.lock
CONSTRAINTS ?= constraints.txt
PIP_ARGS ?=
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup repro test bench check lock

$(VENV)/.installed: pyproject.toml constraints.txt requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(PIP_ARGS) $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Pins what .venv holds now. Not through setup: that installs by the old lock, which a changed bound in pyproject.toml
# contradicts. After changing one: .venv/bin/pip install torch==2.13.0 -e '.[dev]', then make lock.
lock:
	@test -x $(VENV)/bin/python || { echo "make lock: no $(VENV): run make setup first"; exit 1; }
	$(VENV)/bin/python -m arxiv_embed.lockfile

check: setup
	python -m arxiv_embed.params

# `make repro` runs the DAG as params.yaml says; `make repro ARGS="-S key=value ..."` runs it as a
# DVC experiment with those params changed.
repro: check
	$(if $(ARGS),dvc exp run $(ARGS),dvc repro)

test: setup
	python -m pytest -q $(PYTEST_ARGS)

bench: setup
	python -m benchmarks $(ARGS)
