# The pipeline as a graph: every result file is a target that depends on the notebook that
# writes it, the inputs it reads, the parameters it takes and the src/ code it calls.
#   make all     prepare data -> extract features (each model) -> cluster (each model) -> report
#   make help    list the targets
# Outputs go under OUT (the project root by default); see README.md for where each lands.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules --warn-undefined-variables

# ---- What a researcher overrides on the command line -------------------------------------
DATA_DIR ?= data/demo#          dataset folder (COVID/ NORMAL/ PNEUMONIA/); default: synthetic demo
MODELS ?= MobileNetV2-0.35#     space-separated backbones, or "all" (see src/cxrcluster/models.py)
WEIGHTS ?= imagenet#            imagenet | none (random, meaningless features) | path/to/weights.h5
CONFIG ?= config/clustering.yaml#  algorithms, their parameters, seeds, feature preparation
OUT ?= .#                       root of every output (a scratch folder keeps runs apart)
BATCH_SIZE ?= 32
WORKERS ?= 2
PYTHON ?= python3#              interpreter that creates the virtual environment
PYTEST_ARGS ?=

# ---- Derived --------------------------------------------------------------------------------
VENV := .venv
PY := $(VENV)/bin/python
VENV_OK := $(VENV)/.installed
KERNEL := cxrcluster
DEMO_DIR := data/demo
DEMO_MARKER := $(DEMO_DIR)/SYNTHETIC.md

MODEL_LIST := $(if $(filter all,$(MODELS)),$(shell PYTHONPATH=src $(PYTHON) -m cxrcluster.models),$(MODELS))

LABELS := $(OUT)/original_labels.csv
DATASET_JSON := $(OUT)/reports/dataset.json
FEATURES_DIR := $(OUT)/features
RESULTS_DIR := $(OUT)/results
LABELS_DIR := $(OUT)/clustering_labels
RESULTS_CSV := $(OUT)/clustering_results.csv
DRIFT_CSV := $(OUT)/label_drift.csv
AUDIT_DIR := $(OUT)/reports/audit
DUPLICATES_CSV := $(OUT)/reports/duplicates.csv
FIGURES_DIR := $(OUT)/reports/figures
INDEX := $(OUT)/reports/index.html
NB_OUT := $(OUT)/reports/notebooks
STAMPS := $(OUT)/.make

FEATURES := $(foreach m,$(MODEL_LIST),$(FEATURES_DIR)/$(m).npy)
MODEL_RESULTS := $(foreach m,$(MODEL_LIST),$(RESULTS_DIR)/$(m).csv)

# src/ code each stage calls (the package __init__ imports nothing)
S := src/cxrcluster
SRC_BASE := $(S)/__init__.py $(S)/io.py $(S)/paths.py
SRC_PREPARE := $(SRC_BASE) $(S)/data.py $(S)/demo.py
SRC_EXTRACT := $(SRC_BASE) $(S)/data.py $(S)/images.py $(S)/models.py $(S)/features.py
SRC_CLUSTER := $(SRC_BASE) $(S)/data.py $(S)/features.py $(S)/clustering.py $(S)/metrics.py
SRC_AUDIT := $(SRC_BASE) $(S)/data.py $(S)/audit.py $(S)/figures.py
SRC_REPORT := $(SRC_BASE) $(S)/data.py $(S)/features.py $(S)/figures.py $(S)/drift.py

# The demo data is generated when it is the data folder in use.
DATA_PREREQ := $(if $(filter $(abspath $(DEMO_DIR)),$(abspath $(DATA_DIR))),$(DEMO_MARKER))

# $(call papermill,notebook,executed-name,parameters): execute into $(NB_OUT), render to HTML.
define papermill
	@mkdir -p $(NB_OUT)
	$(PY) -m papermill --kernel $(KERNEL) --log-output --no-progress-bar \
	    notebooks/$(1).ipynb $(NB_OUT)/$(2).ipynb $(3)
	@$(PY) -m jupyter nbconvert --to html --log-level WARN $(NB_OUT)/$(2).ipynb
endef

# $(call stamp,commands): write the commands' output to $@ only when it differs, so that what
# depends on a variable or a folder re-runs exactly when it changed.
define stamp
	@mkdir -p $(@D)
	@{ $(1); } > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv -f $@.tmp $@; fi
endef

# ---- Targets ----------------------------------------------------------------------------------
.PHONY: help
help: ## list the targets and the variables to override
	@echo "Targets:"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'
	@echo "Variables (make all VAR=value): DATA_DIR=$(DATA_DIR) MODELS=$(MODELS) WEIGHTS=$(WEIGHTS)"
	@echo "  CONFIG=$(CONFIG) OUT=$(OUT) BATCH_SIZE=$(BATCH_SIZE) WORKERS=$(WORKERS)"

.PHONY: all
all: report ## run the whole pipeline (creates .venv and the demo data if needed)

.PHONY: venv
venv: $(VENV_OK) ## create .venv with the pinned requirements and the project kernel

$(VENV_OK): requirements.txt requirements-source.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation \
	    --no-binary scikit-learn-extra -r requirements-source.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (cxrcluster)"
	touch $@

$(DEMO_MARKER): $(S)/demo.py | $(VENV_OK)
	$(PY) -m cxrcluster.demo $(DEMO_DIR)

# -- value stamps --
.PHONY: FORCE
FORCE:

$(STAMPS)/dataset: FORCE $(DATA_PREREQ)
	@test -d "$(DATA_DIR)" || { echo "DATA_DIR=$(DATA_DIR) is not a folder" >&2; exit 1; }
	$(call stamp,echo "$(abspath $(DATA_DIR))"; find -L "$(DATA_DIR)" -type f -not -name '.*' -printf '%P %s %T@\n' | LC_ALL=C sort)

$(STAMPS)/weights: FORCE
	$(call stamp,echo "$(WEIGHTS)"; if [ -f "$(WEIGHTS)" ]; then stat -L -c '%s %Y' "$(WEIGHTS)"; fi)

$(STAMPS)/models: FORCE
	$(call stamp,echo "$(MODEL_LIST)")

# -- 00: the labels table --
$(LABELS) $(DATASET_JSON) &: notebooks/00-prepare-data.ipynb $(STAMPS)/dataset $(SRC_PREPARE) | $(VENV_OK)
	$(call papermill,00-prepare-data,00-prepare-data,-r data_dir $(DATA_DIR) -r labels_csv $(LABELS) \
	    -r dataset_json $(DATASET_JSON) -p make_demo_if_missing False)

# -- 01: the dataset audit, ahead of extraction --
$(AUDIT_DIR)/confound.json $(DUPLICATES_CSV) &: notebooks/01-audit-data.ipynb $(LABELS) $(DATASET_JSON) \
    $(STAMPS)/dataset $(SRC_AUDIT) | $(VENV_OK)
	$(call papermill,01-audit-data,01-audit-data,-r data_dir $(DATA_DIR) -r labels_csv $(LABELS) \
	    -r dataset_json $(DATASET_JSON) -r audit_dir $(AUDIT_DIR) -r duplicates_csv $(DUPLICATES_CSV) \
	    -r figures_dir $(FIGURES_DIR))

.PHONY: audit
audit: $(AUDIT_DIR)/confound.json ## audit the dataset: per-class files, source confound, duplicates

# -- 02 and 03, one pair of rules per model (extraction waits for the audit, but does not depend on it) --
define model_rules
$(FEATURES_DIR)/$(1).npy: notebooks/02-extract-features.ipynb $(LABELS) $(STAMPS)/dataset $(STAMPS)/weights \
    $(SRC_EXTRACT) | $(VENV_OK) $(AUDIT_DIR)/confound.json
	$$(call papermill,02-extract-features,02-extract-features-$(1),-r model $(1) -r weights $(WEIGHTS) \
	    -r data_dir $(DATA_DIR) -r labels_csv $(LABELS) -r features_dir $(FEATURES_DIR) \
	    -p batch_size $(BATCH_SIZE) -p workers $(WORKERS))

$(RESULTS_DIR)/$(1).csv: notebooks/03-cluster.ipynb $(FEATURES_DIR)/$(1).npy $(LABELS) $(CONFIG) \
    $(SRC_CLUSTER) | $(VENV_OK)
	$$(call papermill,03-cluster,03-cluster-$(1),-r model $(1) -r labels_csv $(LABELS) \
	    -r features_dir $(FEATURES_DIR) -r config $(CONFIG) -r labels_dir $(LABELS_DIR) \
	    -r results_dir $(RESULTS_DIR))
endef
$(foreach m,$(MODEL_LIST),$(eval $(call model_rules,$(m))))

.PHONY: features
features: $(FEATURES) ## extract the features of every model in MODELS

.PHONY: cluster
cluster: $(MODEL_RESULTS) ## cluster every model's features

# -- 04: the report --
$(RESULTS_CSV) $(DRIFT_CSV) &: notebooks/04-report.ipynb $(MODEL_RESULTS) $(DATASET_JSON) \
    $(AUDIT_DIR)/confound.json $(STAMPS)/models $(SRC_REPORT) | $(VENV_OK)
	$(call papermill,04-report,04-report,-r models "$(MODEL_LIST)" -r data_dir $(DATA_DIR) \
	    -r labels_csv $(LABELS) -r results_dir $(RESULTS_DIR) -r labels_dir $(LABELS_DIR) \
	    -r features_dir $(FEATURES_DIR) -r dataset_json $(DATASET_JSON) \
	    -r confound_json $(AUDIT_DIR)/confound.json -r results_csv $(RESULTS_CSV) -r drift_csv $(DRIFT_CSV) \
	    -r figures_dir $(FIGURES_DIR))

# The index links every output; it is rebuilt whenever one of the products it links changes.
$(INDEX): $(RESULTS_CSV) $(DRIFT_CSV) $(DUPLICATES_CSV) $(S)/report.py $(SRC_BASE) | $(VENV_OK)
	$(PY) -m cxrcluster.report $(OUT)

.PHONY: report
report: $(INDEX) ## results table, figures, drift, audit and executed notebooks, linked from reports/index.html

# ---- Development ------------------------------------------------------------------------------
.PHONY: test
test: $(VENV_OK) ## run the tests (unit, notebooks, end to end on ../shared when present)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(VENV_OK) ## ruff on src, tests and notebooks; committed notebooks must carry no outputs
	$(PY) -m ruff check src tests notebooks
	$(PY) -m nbstripout --verify notebooks/*.ipynb

.PHONY: lab
lab: $(VENV_OK) ## open JupyterLab on notebooks/ with the project's kernel
	$(PY) -m jupyter lab --notebook-dir=notebooks

.PHONY: clean
clean: ## delete every output of the pipeline under OUT (keeps .venv and the demo data)
	rm -rf $(LABELS) $(FEATURES_DIR) $(RESULTS_DIR) $(RESULTS_CSV) $(DRIFT_CSV) $(OUT)/reports $(STAMPS)
	find $(LABELS_DIR) -name '*.csv' -delete 2>/dev/null || true

.PHONY: distclean
distclean: clean ## also delete .venv and the generated demo data
	rm -rf $(VENV) $(DEMO_DIR)
