# patchddm — every target bootstraps .venv on first use (CPU torch from the pinned wheel, then the project).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.patchddm-installed
# The pinned CPU build; GPU users: see README "GPU users".
TORCH ?= torch==2.13.0
EXTRAS ?= dev,lab,docs,bench
CROSSCHECK ?= brats-evaluation==0.0.10 panoptica==2.1.7 connected-components-3d ruamel.yaml
DEMO_DIR ?= results/demo

.PHONY: install test demo demo-check lab docs docs-check ablations bench readme export clean-nbs

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]'
	@# test-only cross-check (AGPL, never imported by patchddm); --no-deps: its pins (pandas<3, numpy<2.3) would
	@# downgrade the project's stack, and the parts the test uses run with the current versions
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(CROSSCHECK)
	$(PY) -m pip install -q --disable-pip-version-check scikit-image "plotly<6"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)  ## notebook unit tests (nbdev-test) + end-to-end tests (pytest)
	$(BIN)/nbdev-test --n-workers 2 --timing --skip-folder-re '^([_.]|experiments)$$'
	$(BIN)/pytest -q

demo: $(STAMP)  ## the main job on the embedded phantom data
	$(BIN)/patchddm demo $(DEMO_DIR)

demo-check: $(STAMP)
	$(BIN)/pytest -q -m slow tests/test_demo.py

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=nbs

readme: $(STAMP)  ## regenerate README.md from nbs/index.ipynb
	$(PY) tools/make_readme.py

export: $(STAMP)
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean
	$(PY) tools/make_readme.py

docs: $(STAMP)  ## documentation site into _docs/ (offline; view with: python -m http.server -d _docs)
	$(PY) tools/build_docs.py --out _docs --overwrite

docs-check: $(STAMP)
	$(BIN)/pytest -q -m slow tests/test_docs.py

bench: $(STAMP)  ## memory/speed benchmarks → benchmarks/results/
	$(PY) benchmarks/run_all.py

ablations: $(STAMP)  ## the paper's ablation grid at CPU scale (papermill) → results/ablations/
	$(BIN)/patchddm ablate results/ablations
