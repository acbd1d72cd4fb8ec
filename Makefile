# Flowscope: `make run` and `make test` do all the set-up on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# requirements.lock: what the processes need (all the Docker image installs); requirements-dev.lock
# adds the embedded servers of `make run` and the test and lint tools. `make` installs both.
LOCKS  := requirements.lock requirements-dev.lock
STAMP  := $(VENV)/.installed-$(shell cat $(LOCKS) | cksum | cut -d' ' -f1)

.PHONY: run test bench lint format lock clean

$(STAMP): $(LOCKS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Flowscope needs Python 3.11 or newer")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
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

# Fails when a target of any benchmark is missed (after running them all); QUICK=1 for a
# smaller run of each. bench/README.md says what each figure means.
bench: $(STAMP) $(SCAN_EXT)
	@status=0; \
	$(PY) bench/tap_ingest.py $(if $(QUICK),--quick) || status=$$?; \
	$(PY) bench/demo_saga.py $(if $(QUICK),--quick) || status=$$?; \
	$(PY) bench/live.py $(if $(QUICK),--quick) || status=$$?; \
	$(PY) bench/search.py $(if $(QUICK),--quick) || status=$$?; \
	$(PY) bench/replay.py $(if $(QUICK),--quick) || status=$$?; \
	exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DATABASE_URL=$${DATABASE_URL:-postgresql://lint@127.0.0.1/lint} $(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Re-pin every dependency in throw-away venvs: all of requirements-dev.in resolved together, then
# requirements.in alone within those versions (requirements.lock); requirements-dev.lock gets the
# rest. So both files pin each package shared by the two at the same version.
FREEZE := pip freeze --disable-pip-version-check
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv/all && $(PYTHON) -m venv .lockenv/run
	.lockenv/all/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.in
	.lockenv/all/bin/$(FREEZE) > .lockenv/all.txt
	.lockenv/run/bin/pip install --quiet --disable-pip-version-check -r requirements.in -c .lockenv/all.txt
	.lockenv/run/bin/$(FREEZE) > .lockenv/run.txt
	( echo '# Pinned by `make lock` from requirements.in (pip freeze of a fresh venv, within the versions of'; \
	  echo '# requirements-dev.lock). What the image installs. Do not edit by hand.'; \
	  cat .lockenv/run.txt ) > requirements.lock
	( echo '# Pinned by `make lock` from requirements-dev.in: what it adds to requirements.lock (pip freeze'; \
	  echo '# of a fresh venv). `make` installs this file. Do not edit by hand.'; \
	  echo '-r requirements.lock'; grep -vxF -f .lockenv/run.txt .lockenv/all.txt ) > requirements-dev.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache build eventbus/_scan.*.so eventbus/.built-*
