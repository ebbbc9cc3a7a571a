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

.PHONY: help install up down status demo train checkgpu bento test coverage lint typecheck format clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	@touch $@

install: $(STAMP) ## Create .venv (Python 3.11) and install the project with dev tools

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

test: install ## Run the whole test suite (starts local infrastructure when needed)
	$(BIN)/pytest

coverage: install ## The whole suite with a line-coverage report (code run in the test process)
	$(BIN)/pytest --cov=shared --cov=services --cov=flywheel --cov-report=term-missing:skip-covered

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
