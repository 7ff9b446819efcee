# medcl: the two commands that matter are `make demo` and `make test`.
# Both create .venv when it is missing and install everything into it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medcl-installed
TORCH  := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
WORKERS ?= 2
LINT_PATHS := $(wildcard medcl tests benchmarks app)

# the real sample data beside the checkout, unless MEDCL_DATA says otherwise
MEDCL_DATA ?= $(abspath $(wildcard ../shared/data))
export MEDCL_DATA
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg
# the browser test saves its screenshots here (look at them after `make test`)
MEDCL_SCREENSHOTS ?= $(abspath medcl-workspace/screenshots)
export MEDCL_SCREENSHOTS

.PHONY: venv demo test lint typecheck unit clean-workspace help

help:
	@echo "make demo   set up .venv and run medcl on the sample data (MEDCL_DATA or synthetic)"
	@echo "make test   set up .venv and run lint, type checks and the test suite"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q $(TORCH) -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/hadolint docker/Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml

typecheck: venv
	$(BIN)/mypy medcl

unit: venv
	$(BIN)/pytest -n $(WORKERS) $(PYTEST_ARGS)

test: lint typecheck unit

demo: venv
	$(BIN)/medcl -v demo $(if $(MEDCL_DATA),--data-root $(MEDCL_DATA),)

clean-workspace:
	rm -rf medcl-workspace
