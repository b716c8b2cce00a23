# runed: common tasks. `make help` lists them.
PY ?= .venv/bin/python
VENV_BIN := $(dir $(PY))

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

venv: ## Create .venv and install runed with its development tools
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'

run: ## Run runed on its embedded defaults (SQLite, process runner) with data in ./data
	$(VENV_BIN)runed --data-dir ./data

proto: ## Regenerate pkg/api/generated from pkg/api/proto
	$(PY) scripts/genproto.py

proto-check: ## Fail when the committed generated code is stale
	$(PY) scripts/genproto.py
	@git diff --quiet --exit-code -- pkg/api/generated && test -z "$$(git status --porcelain -- pkg/api/generated)" \
		|| { echo "pkg/api/generated is stale: run 'make proto' and commit"; git status --short -- pkg/api/generated; exit 1; }

lint: ## ruff format check and lint
	$(VENV_BIN)ruff format --check .
	$(VENV_BIN)ruff check .

fmt: ## Format and auto-fix
	$(VENV_BIN)ruff format .
	$(VENV_BIN)ruff check --fix .

typecheck: ## mypy (strict) over runed, gateway, cli, the tests and the benchmarks
	$(VENV_BIN)mypy -p runed -p rune.gateway -p rune.cli -p tests -p bench

imports: ## Import contract (pyproject [tool.importlinter]): layers point down, no forbidden imports, no cycles
	$(VENV_BIN)lint-imports --no-cache --no-logo

test: ## Run the test suite
	$(PY) -m pytest -q

check: lint typecheck imports proto-check test ## The one gate: lint, types, import contract, generated code, tests

vendor-check: ## Verify the dashboard's vendored browser code against the packages on registry.npmjs.org
	$(PY) scripts/check_vendor.py

bench: ## Run the benchmarks (numbers as ratios against a baseline measured in the same run)
	$(PY) -m bench

.PHONY: help venv run proto proto-check lint fmt typecheck imports test check bench vendor-check
