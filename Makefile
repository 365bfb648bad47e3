# m3reid: the two commands of the README are `make demo` and `make test`; both set up .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.m3reid-installed
NBDEV_TEST_TIMEOUT ?= 2400
PIP_NOISE := ^WARNING: Location .* is ignored

.PHONY: install test check-sync nbtest pytest demo lab export clean-nbs bench gpu-check readme

install: $(STAMP)

# (re)install whenever the packaging files change
$(STAMP): settings.ini setup.py
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "Installing m3reid (editable, with the dev extra) into $(VENV) ..."
	@$(PY) -m pip install -q -e ".[dev]" 2>&1 | { grep -Ev '$(PIP_NOISE)' || true; }
	@touch $(STAMP)

# notebooks must be clean and m3reid/ must be what nbdev_export makes of nbs/
check-sync: $(STAMP)
	@snap() { find nbs m3reid -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -not -path '*/__pycache__/*' | sort | xargs sha1sum; }; \
	before=$$(snap); $(BIN)/nbdev_clean; \
	if [ "$$before" != "$$(snap)" ]; then echo "ERROR: notebooks were not clean. nbdev_clean has now cleaned them: review and commit (run 'make clean-nbs' before committing)."; exit 1; fi; \
	$(BIN)/nbdev_export; \
	if [ "$$before" != "$$(snap)" ]; then echo "ERROR: m3reid/ was out of sync with nbs/. nbdev_export has now regenerated it: review and commit (run 'make export' after editing a notebook)."; { git status --short m3reid 2>/dev/null || true; } | head -20; exit 1; fi; \
	echo "Notebooks clean and m3reid/ in sync with nbs/."

nbtest: $(STAMP)
	OMP_NUM_THREADS=1 MPLBACKEND=Agg timeout $(NBDEV_TEST_TIMEOUT) $(BIN)/nbdev_test --n_workers 2

pytest: $(STAMP)
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(PY) -m pytest -q tests

test: check-sync nbtest pytest

demo: $(STAMP)
	$(BIN)/m3reid-demo

lab: $(STAMP)
	$(BIN)/jupyter lab --ip 127.0.0.1 --ServerApp.root_dir nbs $(if $(filter 0,$(shell id -u)),--allow-root)

export: $(STAMP)
	$(BIN)/nbdev_export

clean-nbs: $(STAMP)
	$(BIN)/nbdev_clean

bench: $(STAMP)
	$(BIN)/m3reid-bench all

# one command that validates and measures every CUDA path (tiny CPU run, GPU rows "not measured", without CUDA)
gpu-check: $(STAMP)
	$(BIN)/m3reid-bench gpu

readme: $(STAMP)
	$(PY) tools/readme.py
