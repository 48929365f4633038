# Two commands that work on a fresh machine (they create .venv and install what they need):
#   make demo   run the bundled example timelines through the engine on the bundled guideline
#   make test   ruff, mypy (strict), validate (quotes included) and verify (against the safety
#               contract) the guideline and its profiles, tests
# and, for guideline authors:
#   make diagrams   regenerate diagrams/ and statemachine/ (then commit them; a test checks drift)
# and for performance work:
#   make bench      benchmarks/bench.py: latency, cohort throughput, verify, start-up, vs baselines
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test install clean browser diagrams bench

install: $(VENV)/.installed

# An editable install is not byte-compiled (a wheel install is); where PYTHONDONTWRITEBYTECODE is
# set (as in some sandboxes), Python would then compile every module of src/ on every start.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m compileall -q src
	touch $@

demo: install
	$(BIN)/iechs demo

# The review page's browser test needs Debian's chromium (never `playwright install`: it would
# download a browser build) and the diagrams need the DejaVu Sans font: install them when
# missing and running as root. Without them the browser test skips outside CI and fails in CI.
DEJAVU := /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
browser:
	@if command -v chromium >/dev/null 2>&1 && [ -f $(DEJAVU) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium fonts-dejavu-core >/dev/null) || echo "could not install chromium"; \
	else echo "chromium or DejaVu Sans missing and not root: not installing them"; fi

diagrams: install
	$(BIN)/python -m iechs.diagram.artefacts --screenshot

test: install browser
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/iechs validate
	$(BIN)/iechs verify
	for profile in guideline/profiles/*.yaml; do \
	  $(BIN)/iechs validate "$$profile" && $(BIN)/iechs verify "$$profile" || exit 1; done
	$(BIN)/pytest

# `make bench BENCH_ARGS=--quick` for a short run; the table goes between the README's bench
# markers (nothing is written when they are absent).
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python benchmarks/bench.py --readme README.md $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
