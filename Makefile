# The two commands of the README. Both create or update .venv (idempotent: seconds when nothing changed).
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup demo test
setup:
	@bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
