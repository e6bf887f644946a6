# memfit developer tasks. `make demo` and `make test` work on a fresh machine from a clean clone:
# they create .venv and install everything the project needs into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU torch wheel on this kind of machine; a bare `torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# DeepSpeed JIT-compiles its ops on first use (~1 min each); keep them in the ignored build area.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/build/torch_extensions
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DS_BUILD_OPS := 0

.PHONY: demo test test-quick typecheck bench clean venv postgres-server chromium

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[full,detect,dev]"
	touch $@

demo: venv
	@for f in examples/*.yaml; do echo "== advise $$f"; $(VENV)/bin/advise "$$f" || exit 1; done

# The PostgreSQL store tests start a real server from Debian's postgresql package (they must run, not
# skip, when CI=true): install it when missing and we are root; otherwise those tests skip and say why.
postgres-server:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	  else echo "note: no PostgreSQL server and not root: the PostgreSQL store tests will skip"; fi; \
	fi

test: venv postgres-server chromium typecheck
	$(PY) -m pytest -q

# mypy's configuration (strictness per package) is [tool.mypy] in pyproject.toml.
typecheck: venv
	$(PY) -m mypy engine cli

# The HTML report's browser test needs headless Chromium (Debian's package). Installed here when run as
# root with apt-get; elsewhere the test skips with its reason (under CI=true it fails instead).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "chromium not found and not root: the report's browser test will be skipped"; fi

test-quick: venv
	$(PY) -m pytest -q -m "not slow"

bench: venv
	$(PY) bench/cold_path.py
	$(PY) bench/accuracy.py
	$(PY) bench/rules_throughput.py

clean:
	rm -rf $(VENV) build dist *.egg-info
