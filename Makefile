# roboloop: every target installs into .venv through constraints.txt when needed
# (an unconstrained pip would pull a multi-GB CUDA build of torch).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS ?= dev,bench-envs,robomimic,minari
export MUJOCO_GL ?= egl

.PHONY: install quickstart test test-slow bench bench-quick lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

## The main job: collect demonstrations on the default task, replay them, train a diffusion policy, refine it with residual PPO, evaluate both, write a report with videos.
quickstart: install
	$(VENV)/bin/roboloop quickstart

## The default test run (fast: unit, contract and smoke tests; learning tests are marked slow).
test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

## Every benchmark (writes benchmarks/results/*.json and prints markdown tables).
bench: install
	$(PY) benchmarks/run_all.py

bench-quick: install
	$(PY) benchmarks/run_all.py --quick

lint: install
	$(VENV)/bin/ruff check roboloop tests benchmarks

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
