# Flowscope: `make run` and `make test` do all the set-up on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < requirements.lock | cut -d' ' -f1)

.PHONY: run test bench lint format lock clean

$(STAMP): requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Flowscope needs Python 3.11 or newer")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@rm -f $(VENV)/.installed-* && touch $@

# The tap's hot loop in C (eventbus/_scan.c). Where it cannot be built (no C compiler, no Python
# headers) the tap runs its pure-Python twin (eventbus/scan.py), with about five times the CPU
# per event, and says so in its log. No binary of older source is left behind.
SCAN_EXT := eventbus/.built-$(shell cksum < eventbus/_scan.c | cut -d' ' -f1)
$(SCAN_EXT): eventbus/_scan.c setup.py $(STAMP)
	@rm -f eventbus/.built-* eventbus/_scan.*.so
	@$(PY) -c 'import setuptools' 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check setuptools
	@$(PY) setup.py --quiet build_ext --inplace --force >/dev/null \
	  && touch $@ \
	  || echo "warning: could not build eventbus/_scan.c (the error is above): the tap uses its pure-Python scanner"

run: $(STAMP) $(SCAN_EXT)
	$(PY) -m eventbus.stack

test: $(STAMP) $(SCAN_EXT)
	$(PY) -m pytest $(PYTEST_ARGS)

# Fails when a target of bench/tap_ingest.py is missed (after running both); QUICK=1 for a
# smaller run of each (about a minute). bench/README.md says what each figure means.
bench: $(STAMP) $(SCAN_EXT)
	@status=0; \
	$(PY) bench/tap_ingest.py $(if $(QUICK),--quick) || status=$$?; \
	$(PY) bench/demo_saga.py $(if $(QUICK),--quick) || status=$$?; \
	exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DATABASE_URL=$${DATABASE_URL:-postgresql://lint@127.0.0.1/lint} $(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Re-pin every dependency from requirements.in into requirements.lock, in a throw-away venv.
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet -r requirements.in
	( echo '# Pinned by `make lock` from requirements.in (pip freeze of a fresh venv). Do not edit by hand.'; \
	  .lockenv/bin/pip freeze --disable-pip-version-check ) > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache build eventbus/_scan.*.so eventbus/.built-*
