# The pipeline as a graph: every result file is a target that depends on the notebook that
# writes it, the inputs it reads, the parameters it takes and the src/ code it calls.
#   make all     prepare data -> extract features (each model) -> cluster (each model) -> report
#   make help    list the targets
# Outputs go under OUT (the project root by default); see README.md for where each lands.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

# Paths with spaces ("My Drive/cxr data"): make splits targets and prerequisites at spaces. When a
# path variable holds one, this make links that path under .make/aliases/ (a name without spaces,
# from a hash of the path) and runs the same goals again with the links in its place; the outputs
# land in the folder asked for, through the link.
space := $(subst ,, )
PATH_VARIABLES := OUT DATA_DIR LABELS MASKS_DIR CONFIG WEIGHTS
# A '$' cannot be passed through at all: make expands it wherever the variable is used ("$5" becomes
# the empty variable 5, and the shell then sees what is left). Refuse it before any work.
DOLLARED := $(strip $(foreach v,$(PATH_VARIABLES),$(if $(filter-out undefined,$(origin $(v))),$(if \
    $(findstring $$,$(value $(v))),$(v)))))
ifneq ($(DOLLARED),)
$(error $(DOLLARED) holds a '$$' ($(foreach v,$(DOLLARED),$(v)=$(value $(v)))), which make expands in \
    variables, so the path cannot be passed through make. Link it at a path without '$$' and pass \
    that instead, e.g. ln -s "$(subst $$,\$$,$(value $(firstword $(DOLLARED))))" "$$HOME/cxr-data" \
    then make ... $(firstword $(DOLLARED))="$$HOME/cxr-data")
endif
SPACED := $(strip $(foreach v,$(PATH_VARIABLES),$(if $(filter-out undefined,$(origin $(v))),$(if \
    $(findstring $(space),$(value $(v))),$(v)))))
ifneq ($(SPACED),)
ifneq ($(origin CXR_ALIASED),undefined)
$(error a path still holds a space after aliasing: $(SPACED))
endif
ALIASES := $(CURDIR)/.make/aliases
alias_of = $(ALIASES)/$(shell printf '%s' '$(subst ','"'"',$(1))' | md5sum | cut -c1-16)
GOALS := $(or $(MAKECMDGOALS),help)
.PHONY: $(GOALS)
$(firstword $(GOALS)):
	@mkdir -p "$(ALIASES)"
	$(if $(filter OUT,$(SPACED)),@mkdir -p "$(OUT)")
	@$(foreach v,$(SPACED),ln -sfn "$$(realpath -m "$(value $(v))")" "$(call alias_of,$(value $(v)))";) true
	@$(MAKE) --no-print-directory $(GOALS) CXR_ALIASED=1 $(foreach v,$(SPACED),$(v)=$(call alias_of,$(value $(v))))
$(filter-out $(firstword $(GOALS)),$(GOALS)):
	@:
else
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules --warn-undefined-variables

# ---- What a researcher overrides on the command line -------------------------------------
DATA_DIR ?= data/demo#          dataset folder (COVID/ NORMAL/ PNEUMONIA/); default: synthetic demo
LABELS ?=#                      a labels CSV naming the images of DATA_DIR (instead of class folders)
IMAGE_COLUMN ?=#                its column of file names or paths (default: path, image_name, ...)
LABEL_COLUMN ?=#                its column of labels (default: label, class, ...)
PATIENT_COLUMN ?=#              its column of patient ids (default: patient, patient_id, ...; optional)
SOURCE_COLUMN ?=#               its (or metadata.csv's) column of image sources (default: source, site, hospital, ...; optional)
MAX_BAD_FRACTION ?= 0.05#       stop extraction when more than this share of images cannot be read
MODELS ?= MobileNetV2-0.35#     space-separated backbones, or "all" (see src/cxrcluster/models.py), or whole model files (.keras, .h5, SavedModel folders)
WEIGHTS ?= imagenet#            imagenet | none (random, meaningless features) | path/to/weights.h5 (a head in it is ignored)
FEATURE_LAYER ?=#               a model file's layer whose output is the feature vector (default: last global pooling, else input of the last dense layer)
PREPROCESS ?=#                  a model file's input scaling in training: tf | caffe | torch | raw | xray (required for a model file)
INPUT_SIZE ?=#                  a model file's square input size, when the model does not state one
MODEL_MODULES ?=#               modules to import before loading a model file (they register its custom layers)
CONFIG ?= config/clustering.yaml#  algorithms, their parameters, seeds, feature preparation
OUT ?= .#                       root of every output (a scratch folder keeps runs apart)
BATCH_SIZE ?= 32
WORKERS ?= 2
ENGINE ?= auto#                 forward pass of extraction: auto (openvino when installed) | openvino | tensorflow
PRECISION ?= auto#              auto (bf16/int8 where the CPU runs it and it passes a check on the data, else fp32) | fp32 | bf16 | int8
SCHEDULER ?=#                   where extraction and clustering run: empty (here), local:N, tcp://host:8786 (Dask)
NOTEBOOK_TIMEOUT ?= 7200#       seconds one notebook cell may run before its step fails (a hung kernel stops make)
PYTHON ?= python3#              interpreter that creates the virtual environment
PYTEST_ARGS ?=
TEST_WORKERS ?= 2#              test processes (pytest-xdist); 1 runs the tests in this process

# One run at a time into an OUT (a second terminal, a CI retry): a goal that writes under OUT runs
# as a sub-make holding flock(1) on $(OUT)/.make/lock, whose text names the holder's process. A
# second run refuses with that name. The system drops a flock when the last process holding it
# ends, so a killed run leaves no lock behind, only its text, which the next run reports and
# replaces. help, make -n/-q and the development goals below take no lock.
LOCK := $(OUT)/.make/lock
LOCK_FREE_GOALS := help venv test test-fast lint bench lab clean distclean
LOCK_GOALS := $(or $(MAKECMDGOALS),help)
DRY_RUN := $(if $(filter-out -%,$(firstword $(MAKEFLAGS))),$(findstring n,$(firstword $(MAKEFLAGS)))$(findstring \
    q,$(firstword $(MAKEFLAGS))))
ifneq ($(and $(filter-out $(LOCK_FREE_GOALS),$(LOCK_GOALS)),$(if $(DRY_RUN),,yes),$(filter undefined,$(origin \
    CXR_LOCKED))),)
.PHONY: $(LOCK_GOALS)
$(firstword $(LOCK_GOALS)):
	@mkdir -p "$(OUT)/.make"
	@exec 9>>"$(LOCK)"; \
	if ! flock -n 9; then \
	    echo "make: another run into OUT=$(OUT) holds the lock $(abspath $(LOCK)):" \
	        "$$(cat "$(LOCK)" 2>/dev/null || true). Wait for it to end, or stop it (a killed run's lock is released)." >&2; \
	    exit 1; \
	fi; \
	if [ -s "$(LOCK)" ]; then echo "make: taking over $(LOCK) from $$(cat "$(LOCK)"), which ended without releasing it" >&2; fi; \
	echo "process $$PPID (make $(LOCK_GOALS), started $$(date '+%F %T'))" > "$(LOCK)"; \
	trap ': > "$(LOCK)"' EXIT; \
	$(MAKE) --no-print-directory $(LOCK_GOALS) CXR_LOCKED=1
$(filter-out $(firstword $(LOCK_GOALS)),$(LOCK_GOALS)):
	@:
else
# ---- Derived --------------------------------------------------------------------------------
VENV := .venv
PY := $(VENV)/bin/python
VENV_OK := $(VENV)/.installed
KERNEL := cxrcluster
DEMO_DIR := data/demo
DEMO_MARKER := $(DEMO_DIR)/SYNTHETIC.md

# Each MODELS entry's name (a model file's: its stem and a short hash of its bytes, so that a changed
# file is a new model) and the entry itself: MODEL_SPEC.<name> is what notebooks 02 and 06 build.
MODEL_PAIRS := $(shell PYTHONPATH=src $(PYTHON) -m cxrcluster.models --names $(if $(filter all,$(MODELS)),$$(PYTHONPATH=src \
    $(PYTHON) -m cxrcluster.models),$(MODELS)) 2>&1)
ifneq ($(.SHELLSTATUS),0)
$(error MODELS=$(MODELS): $(MODEL_PAIRS))
endif
MODEL_LIST := $(foreach p,$(MODEL_PAIRS),$(firstword $(subst =, ,$(p))))
$(foreach p,$(MODEL_PAIRS),$(eval MODEL_SPEC.$(firstword $(subst =, ,$(p))) := $(word 2,$(subst =, ,$(p)))))
model_spec = $(or $(MODEL_SPEC.$(1)),$(1))
# the options of a model file, for notebooks 02 and 06
MODEL_OPTIONS = -r feature_layer "$(FEATURE_LAYER)" -r preprocess "$(PREPROCESS)" -p input_size $(or $(INPUT_SIZE),0) \
    -r model_modules "$(MODEL_MODULES)"

# Every variant of the pipeline (full images; lung-masked images) writes its own output set:
# $(call out,VARIANT) is its root. The masked variant reads a masked copy of DATA_DIR made by
# notebooks/07-mask-lungs (or from MASKS_DIR, a folder of lung masks with the images' paths).
VARIANT ?= full#                full | masked (masked also runs full, then compares the two)
MASKS_DIR ?=#                   optional user-supplied lung masks for VARIANT=masked
out = $(if $(filter masked,$(1)),$(OUT)/masked,$(OUT))
MASKED_DATA := $(OUT)/masked/data
MASKS_CSV := $(OUT)/masked/reports/masks.csv
COMPARISON := $(OUT)/reports/variants_comparison.csv
INTERPRET_MODEL ?= $(firstword $(MODEL_LIST))#  the model whose Grad-CAM and saliency maps are drawn

# src/ code each stage calls: the import closure of each notebook (and of the index page's module),
# computed from the code by cxrcluster.depgraph into an included file that make rebuilds (and then
# re-reads) whenever a notebook or a src/ file changes. Editing a src/ file re-runs exactly the
# notebooks that import it, directly or through another module; tests/test_makefile.py checks it.
S := src/cxrcluster
SRC_DEPS_MK := .make/src-deps.mk
SRC_STAGES := SRC_PREPARE=notebooks/00-prepare-data.ipynb SRC_AUDIT=notebooks/01-audit-data.ipynb \
    SRC_EXTRACT=notebooks/02-extract-features.ipynb SRC_CLUSTER=notebooks/03-cluster.ipynb \
    SRC_REPORT=notebooks/04-report.ipynb SRC_PROBE=notebooks/05-supervised.ipynb \
    SRC_INTERPRET=notebooks/06-interpretability.ipynb SRC_MASK=notebooks/07-mask-lungs.ipynb \
    SRC_COMPARE=notebooks/08-compare-variants.ipynb SRC_PREPARATIONS=notebooks/09-compare-preparations.ipynb \
    SRC_ISSUES=notebooks/10-label-issues.ipynb SRC_WITHIN=notebooks/11-within-source.ipynb \
    SRC_INDEX=cxrcluster.report SRC_DEMO=cxrcluster.demo
$(SRC_DEPS_MK): $(wildcard notebooks/*.ipynb) $(shell find $(S) -name '*.py') Makefile
	@mkdir -p $(@D)
	@PYTHONPATH=src $(PYTHON) -m cxrcluster.depgraph --make $(SRC_STAGES) > $@.$$$$.tmp && mv -f $@.$$$$.tmp $@
include $(SRC_DEPS_MK)

# The demo data is generated when it is the data folder in use.
DATA_PREREQ := $(if $(filter $(abspath $(DEMO_DIR)),$(abspath $(DATA_DIR))),$(DEMO_MARKER))

# $(call papermill,notebook,executed-name,parameters,output-root): execute the notebook into
# <output-root>/reports/notebooks/. The index page's step (cxrcluster.report) renders every executed
# notebook there to HTML, in one process.
define papermill
	@mkdir -p $(4)/reports/notebooks
	$(PY) -m papermill --kernel $(KERNEL) --log-output --no-progress-bar --execution-timeout $(NOTEBOOK_TIMEOUT) \
	    notebooks/$(1).ipynb $(4)/reports/notebooks/$(2).ipynb $(3)
endef

# $(call stamp,commands): write the commands' output to $@ only when it differs, so that what
# depends on a variable or a folder re-runs exactly when it changed. The temporary name carries the
# shell's PID, so that two makes never share it; the trap removes it when the commands fail.
define stamp
	@mkdir -p $(@D)
	@tmp=$@.$$$$.tmp; trap 'rm -f "$$tmp"' EXIT; { $(1); } > "$$tmp"; \
	if cmp -s "$$tmp" $@; then rm -f "$$tmp"; else mv -f "$$tmp" $@; fi
endef

# ---- Targets ----------------------------------------------------------------------------------
.PHONY: help
help: ## list the targets and the variables to override
	@echo "Targets:"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'
	@echo "Variables (make all VAR=value): DATA_DIR=$(DATA_DIR) MODELS=$(MODELS) WEIGHTS=$(WEIGHTS)"
	@echo "  CONFIG=$(CONFIG) OUT=$(OUT) VARIANT=$(VARIANT) MASKS_DIR=$(MASKS_DIR) BATCH_SIZE=$(BATCH_SIZE)"
	@echo "  WORKERS=$(WORKERS) ENGINE=$(ENGINE) PRECISION=$(PRECISION) MAX_BAD_FRACTION=$(MAX_BAD_FRACTION)"
	@echo "  SCHEDULER=$(SCHEDULER) (empty: this process; local:N; tcp://host:8786; or DASK_SCHEDULER_ADDRESS)"
	@echo "  LABELS=$(LABELS) IMAGE_COLUMN=$(IMAGE_COLUMN) LABEL_COLUMN=$(LABEL_COLUMN) PATIENT_COLUMN=$(PATIENT_COLUMN)"
	@echo "  SOURCE_COLUMN=$(SOURCE_COLUMN) NOTEBOOK_TIMEOUT=$(NOTEBOOK_TIMEOUT) (seconds per notebook cell)"
	@echo "  a model file in MODELS: PREPROCESS=$(PREPROCESS) FEATURE_LAYER=$(FEATURE_LAYER) INPUT_SIZE=$(INPUT_SIZE) MODEL_MODULES=$(MODEL_MODULES)"

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

$(DEMO_MARKER): $(SRC_DEMO) | $(VENV_OK)
	$(PY) -m cxrcluster.demo $(DEMO_DIR)

# -- value stamps --
.PHONY: FORCE
FORCE:

$(OUT)/.make/extraction: FORCE
	$(call stamp,echo "$(WEIGHTS) $(ENGINE) $(PRECISION) $(BATCH_SIZE) $(MAX_BAD_FRACTION)"; \
	    echo "$(FEATURE_LAYER) | $(PREPROCESS) | $(INPUT_SIZE) | $(MODEL_MODULES)"; \
	    if [ -f "$(WEIGHTS)" ]; then stat -L -c '%s %Y' "$(WEIGHTS)"; fi)

$(OUT)/.make/models: FORCE
	$(call stamp,echo "$(MODEL_LIST) | $(INTERPRET_MODEL)")

# $(call dataset_stamp,folder): the folder's path and every file's name, size and time.
dataset_stamp = echo "$(abspath $(1))"; find -L "$(1)" -type f -not -name '.*' -printf '%P %s %T@\n' | LC_ALL=C sort

$(OUT)/.make/dataset: FORCE $(DATA_PREREQ)
	@test -d "$(DATA_DIR)" || { echo "DATA_DIR=$(DATA_DIR) is not a folder" >&2; exit 1; }
	$(if $(LABELS),@test -f "$(LABELS)" || { echo "LABELS=$(LABELS) is not a file" >&2; exit 1; })
	$(call stamp,$(call dataset_stamp,$(DATA_DIR)); \
	    echo "labels: $(LABELS) $(IMAGE_COLUMN) $(LABEL_COLUMN) $(PATIENT_COLUMN) $(SOURCE_COLUMN)"$(if $(LABELS),; cat "$(LABELS)"))

$(OUT)/.make/masks: FORCE
	$(call stamp,echo "masks: $(MASKS_DIR)"$(if $(MASKS_DIR),; $(call dataset_stamp,$(MASKS_DIR))))

# -- 07: the lung-masked copy of the data (read by the masked variant) --
$(MASKS_CSV): notebooks/07-mask-lungs.ipynb $(OUT)/original_labels.csv $(OUT)/.make/dataset $(OUT)/.make/masks \
    $(SRC_MASK) | $(VENV_OK)
	$(call papermill,07-mask-lungs,07-mask-lungs,-r data_dir $(DATA_DIR) -r masked_dir $(MASKED_DATA) \
	    -r original_labels_csv $(OUT)/original_labels.csv \
	    -r masks_dir "$(MASKS_DIR)" -r masks_csv $(MASKS_CSV) -r figures_dir $(OUT)/masked/reports/figures,$(OUT)/masked)

$(OUT)/masked/.make/dataset: FORCE $(MASKS_CSV)
	$(call stamp,$(call dataset_stamp,$(MASKED_DATA)))

# $(call label_csvs,OUTROOT,MODEL): the label CSVs that the model's clustering wrote, as listed by
# notebook 03 in results/<Model>.label_csvs.txt (read by make itself, no process started), so that the
# clustering rule declares them as its products and a deleted one is made again.
label_csvs = $(if $(wildcard $(1)/results/$(2).label_csvs.txt),\
    $(addprefix $(1)/clustering_labels/,$(file <$(1)/results/$(2).label_csvs.txt)))

# $(call variant_rules,OUTROOT,DATA,DATASET_STAMP): notebooks 00 to 06 on one variant's data.
define variant_rules
$(1)/original_labels.csv $(1)/reports/dataset.json &: notebooks/00-prepare-data.ipynb $(3) $(SRC_PREPARE) | $(VENV_OK)
	$$(call papermill,00-prepare-data,00-prepare-data,-r data_dir $(2) -r original_labels_csv $(1)/original_labels.csv \
	    -r dataset_json $(1)/reports/dataset.json -p make_demo_if_missing False \
	    -r labels_csv "$(LABELS)" -r image_column "$(IMAGE_COLUMN)" -r label_column "$(LABEL_COLUMN)" \
	    -r patient_column "$(PATIENT_COLUMN)" -r source_column "$(SOURCE_COLUMN)",$(1))

# 01: the dataset audit, ahead of extraction
$(1)/reports/audit/confound.json $(1)/reports/audit/metadata.csv $(1)/reports/audit/summary.csv \
    $(1)/reports/duplicates.csv &: notebooks/01-audit-data.ipynb \
    $(1)/original_labels.csv $(1)/reports/dataset.json $(3) $(SRC_AUDIT) | $(VENV_OK)
	$$(call papermill,01-audit-data,01-audit-data,-r data_dir $(2) -r original_labels_csv $(1)/original_labels.csv \
	    -r dataset_json $(1)/reports/dataset.json -r audit_dir $(1)/reports/audit \
	    -r duplicates_csv $(1)/reports/duplicates.csv -r figures_dir $(1)/reports/figures,$(1))

# 02 and 03, one pair per model (extraction waits for the audit, but does not depend on it)
$(foreach m,$(MODEL_LIST),$(call model_rules,$(1),$(2),$(3),$(m)))

# 04: the report
$(1)/clustering_results.csv $(1)/label_drift.csv &: notebooks/04-report.ipynb \
    $(foreach m,$(MODEL_LIST),$(1)/results/$(m).csv $(call label_csvs,$(1),$(m))) $(1)/reports/dataset.json \
    $(1)/reports/audit/confound.json $(1)/reports/audit/metadata.csv $(1)/reports/within_source_results.csv \
    $(OUT)/.make/models $(SRC_REPORT) | $(VENV_OK)
	$$(call papermill,04-report,04-report,-r models "$(MODEL_LIST)" -r data_dir $(2) \
	    -r original_labels_csv $(1)/original_labels.csv -r results_dir $(1)/results -r clustering_labels_dir $(1)/clustering_labels \
	    -r features_dir $(1)/features -r dataset_json $(1)/reports/dataset.json \
	    -r confound_json $(1)/reports/audit/confound.json -r audit_metadata_csv $(1)/reports/audit/metadata.csv \
	    -r within_source_csv $(1)/reports/within_source_results.csv -r results_csv $(1)/clustering_results.csv \
	    -r drift_csv $(1)/label_drift.csv -r figures_dir $(1)/reports/figures,$(1))

# 11: the fair test: every source holding two classes or more, clustered on its own
$(1)/reports/within_source_results.csv: notebooks/11-within-source.ipynb \
    $(foreach m,$(MODEL_LIST),$(1)/features/$(m).npy) $(1)/original_labels.csv $(1)/reports/dataset.json \
    $(1)/reports/audit/metadata.csv $(CONFIG) $(OUT)/.make/models $(SRC_WITHIN) | $(VENV_OK)
	$$(call papermill,11-within-source,11-within-source,-r models "$(MODEL_LIST)" \
	    -r original_labels_csv $(1)/original_labels.csv -r features_dir $(1)/features \
	    -r audit_metadata_csv $(1)/reports/audit/metadata.csv -r dataset_json $(1)/reports/dataset.json \
	    -r config $(CONFIG) -r within_source_csv $(1)/reports/within_source_results.csv \
	    -r within_source_labels_dir $(1)/clustering_labels/within_source -r scheduler "$(SCHEDULER)",$(1))

# 05: supervised baselines on the same features
$(1)/classification_results.csv: notebooks/05-supervised.ipynb $(1)/clustering_results.csv \
    $(foreach m,$(MODEL_LIST),$(1)/features/$(m).npy) $(OUT)/.make/models $(SRC_PROBE) | $(VENV_OK)
	$$(call papermill,05-supervised,05-supervised,-r models "$(MODEL_LIST)" -r data_dir $(2) \
	    -r original_labels_csv $(1)/original_labels.csv -r features_dir $(1)/features \
	    -r results_csv $(1)/clustering_results.csv -r classification_csv $(1)/classification_results.csv \
	    -r dataset_json $(1)/reports/dataset.json -r figures_dir $(1)/reports/figures,$(1))

# 10: label issues (drift, confident learning, duplicates per image) and the planted-noise check
$(1)/label_issues.csv $(1)/reports/label_noise_check.csv &: notebooks/10-label-issues.ipynb \
    $(1)/clustering_results.csv $(1)/label_drift.csv $(1)/reports/duplicates.csv \
    $(foreach m,$(MODEL_LIST),$(1)/features/$(m).npy) $(OUT)/.make/models $(SRC_ISSUES) | $(VENV_OK)
	$$(call papermill,10-label-issues,10-label-issues,-r models "$(MODEL_LIST)" -r data_dir $(2) \
	    -r original_labels_csv $(1)/original_labels.csv -r features_dir $(1)/features \
	    -r results_csv $(1)/clustering_results.csv -r clustering_labels_dir $(1)/clustering_labels \
	    -r duplicates_csv $(1)/reports/duplicates.csv -r dataset_json $(1)/reports/dataset.json \
	    -r label_issues_csv $(1)/label_issues.csv -r noise_check_csv $(1)/reports/label_noise_check.csv \
	    -r figures_dir $(1)/reports/figures,$(1))

# 06: Grad-CAM and saliency of one model, with the linear probe as its head
$(1)/reports/interpretability.json: notebooks/06-interpretability.ipynb $(1)/label_drift.csv \
    $(1)/features/$(INTERPRET_MODEL).npy $(CONFIG) $(OUT)/.make/extraction $(OUT)/.make/models \
    $(SRC_INTERPRET) | $(VENV_OK)
	$$(call papermill,06-interpretability,06-interpretability,-r model $(call model_spec,$(INTERPRET_MODEL)) \
	    -r weights $(WEIGHTS) $(MODEL_OPTIONS) \
	    -r data_dir $(2) -r original_labels_csv $(1)/original_labels.csv -r features_dir $(1)/features \
	    -r clustering_labels_dir $(1)/clustering_labels -r drift_csv $(1)/label_drift.csv -r config $(CONFIG) \
	    -r dataset_json $(1)/reports/dataset.json -r summary_json $(1)/reports/interpretability.json \
	    -r figures_dir $(1)/reports/figures,$(1))

# the index links every output; it is rebuilt whenever a product it links changes
$(1)/reports/index.html: $(1)/clustering_results.csv $(1)/label_drift.csv $(1)/reports/duplicates.csv \
    $(1)/reports/within_source_results.csv $(1)/classification_results.csv $(1)/reports/interpretability.json \
    $(1)/label_issues.csv \
    $(if $(and $(filter masked,$(VARIANT)),$(filter $(OUT),$(1))),$(COMPARISON)) \
    $(SRC_INDEX) | $(VENV_OK)
	$(PY) -m cxrcluster.report $(1)
endef

# $(call model_rules,OUTROOT,DATA,DATASET_STAMP,MODEL)
define model_rules
$(1)/features/$(4).npy: notebooks/02-extract-features.ipynb $(1)/original_labels.csv $(3) $(OUT)/.make/extraction \
    $(SRC_EXTRACT) | $(VENV_OK) $(1)/reports/audit/confound.json
	$$(call papermill,02-extract-features,02-extract-features-$(4),-r model $(call model_spec,$(4)) \
	    -r weights $(WEIGHTS) $(MODEL_OPTIONS) \
	    -r data_dir $(2) -r original_labels_csv $(1)/original_labels.csv -r features_dir $(1)/features \
	    -p batch_size $(BATCH_SIZE) -p workers $(WORKERS) -r engine $(ENGINE) -r precision $(PRECISION) \
	    -p max_bad_fraction $(MAX_BAD_FRACTION) -r scheduler "$(SCHEDULER)" -r cache_dir $(1)/cache,$(1))

$(1)/results/$(4).csv $(1)/results/$(4).label_csvs.txt $(call label_csvs,$(1),$(4)) &: notebooks/03-cluster.ipynb $(1)/features/$(4).npy $(1)/original_labels.csv $(CONFIG) \
    $(1)/reports/audit/metadata.csv $(SRC_CLUSTER) | $(VENV_OK)
	$$(call papermill,03-cluster,03-cluster-$(4),-r model $(4) -r original_labels_csv $(1)/original_labels.csv \
	    -r features_dir $(1)/features -r audit_metadata_csv $(1)/reports/audit/metadata.csv -r config $(CONFIG) \
	    -r clustering_labels_dir $(1)/clustering_labels -r results_dir $(1)/results -r scheduler "$(SCHEDULER)",$(1))

endef

$(eval $(call variant_rules,$(OUT),$(DATA_DIR),$(OUT)/.make/dataset))
$(eval $(call variant_rules,$(OUT)/masked,$(MASKED_DATA),$(OUT)/masked/.make/dataset))

# 08: full versus lung-masked, side by side
$(COMPARISON): notebooks/08-compare-variants.ipynb $(OUT)/clustering_results.csv $(OUT)/classification_results.csv \
    $(OUT)/masked/clustering_results.csv $(OUT)/masked/classification_results.csv $(OUT)/reports/dataset.json \
    $(OUT)/reports/within_source_results.csv $(OUT)/masked/reports/within_source_results.csv $(SRC_COMPARE) | $(VENV_OK)
	$(call papermill,08-compare-variants,08-compare-variants,-r full_dir $(OUT) -r masked_dir $(OUT)/masked \
	    -r comparison_csv $(COMPARISON) -r figures_dir $(OUT)/reports/figures,$(OUT))

# 09: the evidence behind the feature preparations (not part of all: it runs the suite five times)
PREPARATIONS_CSV := $(OUT)/reports/preparations.csv
$(PREPARATIONS_CSV): notebooks/09-compare-preparations.ipynb $(OUT)/features/$(INTERPRET_MODEL).npy \
    $(OUT)/original_labels.csv $(OUT)/reports/dataset.json $(CONFIG) $(SRC_PREPARATIONS) | $(VENV_OK)
	$(call papermill,09-compare-preparations,09-compare-preparations,-r model $(INTERPRET_MODEL) \
	    -r original_labels_csv $(OUT)/original_labels.csv -r features_dir $(OUT)/features -r config $(CONFIG) \
	    -r dataset_json $(OUT)/reports/dataset.json -r preparations_csv $(PREPARATIONS_CSV) \
	    -r figures_dir $(OUT)/reports/figures,$(OUT))
	$(PY) -m cxrcluster.report $(OUT)

.PHONY: preparations
preparations: $(PREPARATIONS_CSV) ## compare feature preparations for every algorithm (the evidence in config/clustering.yaml)

.PHONY: report
report: $(call out,full)/reports/index.html $(if $(filter masked,$(VARIANT)),$(OUT)/masked/reports/index.html) ## every output, linked from reports/index.html (VARIANT=masked adds the masked run and the comparison)

.PHONY: audit features cluster issues
audit: $(call out,$(VARIANT))/reports/audit/confound.json ## audit the dataset: per-class files, source confound, duplicates
features: $(foreach m,$(MODEL_LIST),$(call out,$(VARIANT))/features/$(m).npy) ## extract the features of every model in MODELS
cluster: $(foreach m,$(MODEL_LIST),$(call out,$(VARIANT))/results/$(m).csv $(call label_csvs,$(call out,$(VARIANT)),$(m))) ## cluster every model's features
issues: $(call out,$(VARIANT))/label_issues.csv ## label issues per image and the planted-noise check

# ---- Development ------------------------------------------------------------------------------
# Tests run in TEST_WORKERS processes (pytest-xdist), a test file to a process: most of a test's time is
# one core's (kernels starting, single-threaded fits, make's steps), so two processes fill two cores.
TEST_PROCESSES := $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

.PHONY: test-fast
test-fast: $(VENV_OK) ## the unit tier: tiny data, no notebooks, no make runs, no clusters, no quantisation (< 2 min)
	$(PY) -m pytest -m "not slow" $(TEST_PROCESSES) $(PYTEST_ARGS)

.PHONY: test
test: $(VENV_OK) ## every tier: unit, notebooks, Dask, int8, end to end, real data of ../shared when present
	$(PY) -m pytest $(TEST_PROCESSES) $(PYTEST_ARGS)

.PHONY: lint
lint: $(VENV_OK) ## ruff on src, tests, notebooks and benchmarks; committed notebooks must carry no outputs
	$(PY) -m ruff check src tests notebooks benchmarks
	$(PY) -m nbstripout --verify notebooks/*.ipynb

.PHONY: bench
bench: $(VENV_OK) ## measure extraction and clustering speed into reports/benchmarks.md (not part of test)
	$(PY) -m benchmarks --out reports/benchmarks --pipeline-default $(if $(filter auto,$(ENGINE) $(PRECISION)),auto,$(ENGINE)-$(PRECISION))

.PHONY: lab
lab: $(VENV_OK) ## open JupyterLab on notebooks/ with the project's kernel
	$(PY) -m jupyter lab --notebook-dir=notebooks

.PHONY: clean
clean: ## delete every output of the pipeline under OUT (keeps .venv and the demo data)
	rm -rf $(addprefix $(OUT)/,original_labels.csv features results clustering_results.csv label_drift.csv label_issues.csv \
	    classification_results.csv reports masked .make cache)
	find $(OUT)/clustering_labels -name '*.csv' -delete 2>/dev/null || true

.PHONY: distclean
distclean: clean ## also delete .venv and the generated demo data
	rm -rf $(VENV) $(DEMO_DIR)

endif  # the lock
endif  # paths with spaces
