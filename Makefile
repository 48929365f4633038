# Two commands that work on a fresh machine (they create .venv and install what they need):
#   make demo   run the bundled example timelines through the engine on the bundled guideline
#   make test   ruff, mypy (strict), validate and verify the guideline and its profiles, tests
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/iechs demo

test: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/iechs validate
	$(BIN)/iechs verify
	for profile in guideline/profiles/*.yaml; do $(BIN)/iechs verify "$$profile" || exit 1; done
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
