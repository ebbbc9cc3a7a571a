# Flywheel developer commands; `make` alone lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := $(wildcard constraints.txt)
RUN_DIR := $(or $(FLYWHEEL_RUN_DIR),.flywheel)
BENTO_MODEL ?= customer-segment:latest
SEED ?= $(shell date +%s)
# helm renders deploy/helm/flywheel in tests/unit/test_helm_chart.py. It is built once per
# machine from its Go module (about 3 CPU-minutes) into the per-user cache beside Kafka's jars.
HELM_VERSION := v3.22.0
HELM := $(HOME)/.cache/flywheel/helm-$(HELM_VERSION)/helm
# As helm's own release build links it: its version, and the Kubernetes version it assumes
# offline (its client-go's, v0.37 -> 1.37; a plain `go install` says v1.20).
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	$(foreach pkg,chartutil lint/rules,-X helm.sh/helm/v3/pkg/$(pkg).k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/$(pkg).k8sVersionMinor=37)

.PHONY: help install helm up down status demo train checkgpu bento test coverage lint typecheck format clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	@touch $@

install: $(STAMP) ## Create .venv (Python 3.11) and install the project with dev tools

$(HELM):
	@command -v go > /dev/null || { echo "Go is needed to build helm $(HELM_VERSION) (tests/unit/test_helm_chart.py)"; exit 1; }
	GOBIN="$(@D)" GOFLAGS=-buildvcs=false go install -trimpath -ldflags="$(HELM_LDFLAGS)" helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

helm: $(HELM) ## Build helm (pinned, once per machine) for the Helm chart's tests

up: install ## Start Kafka, Redis, MLflow and the five services
	$(BIN)/flywheel up

down: ## Stop the services and the infrastructure
	@if [ -x $(BIN)/flywheel ]; then $(BIN)/flywheel down; fi

status: install ## Show what runs where
	$(BIN)/flywheel status

demo: install ## Run the demo end to end
	$(BIN)/flywheel demo

train: up ## Generate a labelled batch and announce it: the trainer trains, the registry gates it
	$(BIN)/flywheel data generate "$(RUN_DIR)/data/make-train-$(SEED).parquet" --seed $(SEED)
	$(BIN)/flywheel data push "$(RUN_DIR)/data/make-train-$(SEED).parquet"

checkgpu: install ## Show the device PyTorch trains on: GPU name, memory, CUDA version, or CPU
	$(BIN)/flywheel checkgpu

bento: install ## bentoml build of an approved version (BENTO_MODEL=customer-segment:v3; default latest)
	BENTOML_HOME="$(abspath $(RUN_DIR))/data/bentoml" FLYWHEEL_BENTO_MODEL=$(BENTO_MODEL) BENTOML_DO_NOT_TRACK=True $(BIN)/bentoml build

test: install helm ## Run the whole test suite (starts local infrastructure when needed)
	FLYWHEEL_HELM="$(HELM)" $(BIN)/pytest

coverage: install helm ## The whole suite with a line-coverage report (code run in the test process)
	FLYWHEEL_HELM="$(HELM)" $(BIN)/pytest --cov=shared --cov=services --cov=flywheel --cov-report=term-missing:skip-covered

lint: install ## Check lint and formatting with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## Type-check with mypy (strict)
	$(BIN)/mypy shared services flywheel tests

format: install ## Format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: down ## Stop everything and remove the run directory
	rm -rf "$(RUN_DIR)"
