# Flywheel developer commands; `make` alone lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := $(wildcard constraints.txt)
RUN_DIR := $(or $(FLYWHEEL_RUN_DIR),.flywheel)

.PHONY: help install up down status demo test lint typecheck format clean

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

test: install ## Run the whole test suite (starts local infrastructure when needed)
	$(BIN)/pytest

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
