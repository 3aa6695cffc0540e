# normlab: `make train` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install train test test-fast test-slurm lint format tensorboard bench clean

# Re-install whenever pyproject.toml changes. torch is pinned to a range that pip resolves
# from local wheels where a machine provides them; elsewhere it comes from PyPI.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job: the default model on CIFAR-10. Extra Hydra overrides: make train ARGS="data=digits"
train: $(STAMP)
	$(PY) train.py $(ARGS)

## The whole test suite (offline; about 30 minutes on a busy 2-core machine): in-process and end-to-end.
test: $(STAMP)
	$(PY) -m pytest $(ARGS)

## The in-process tier only (under two minutes): no training subprocesses.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(ARGS)

## The SLURM tier: starts a one-node SLURM cluster here (root; installs slurm-wlm and munge when
## missing), runs the tests marked slurm on it and stops it again (docs/cluster.md).
test-slurm: $(STAMP)
	tools/slurm/local_cluster.sh start
	SLURM_CONF=$${NORMLAB_SLURM_DIR:-/tmp/normlab-slurm}/slurm.conf $(PY) -m pytest -m slurm $(ARGS); \
		status=$$?; tools/slurm/local_cluster.sh stop; exit $$status

## normlab against the lesson's pipeline and loop: prints a table, writes bench.json (about two minutes).
bench: $(STAMP)
	$(PY) -m normlab.bench $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir logs

clean:
	rm -rf logs outputs multirun .pytest_cache .ruff_cache bench.json
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
