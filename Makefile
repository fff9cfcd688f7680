# The two commands: `make demo` and `make test`. Each sets up .venv when it is missing
# or older than pyproject.toml, so on a fresh machine they are the only set-up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-out
# Test processes (pytest-xdist): one per core; TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= auto

.PHONY: demo test lint layers check-install bench install clean netbed

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "aipg-node needs Python >= 3.11 (found " + sys.version.split()[0] + ")")'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[cpu,dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m aipg.cli.demo --dir $(DEMO_DIR)

# Imports only point down the layers of DESIGN.md, and no modules import in a circle.
layers: $(STAMP)
	$(BIN)/python tools/check_layers.py

lint: layers
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: layers
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS)

# The built wheel with [cpu] only, in a fresh venv: every command runs without dev extras.
check-install:
	PY=$(PY) bash tools/check_install.sh

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Network namespaces on a bridge, two nodes behind NAT routers: jobs, a partition, healing.
# Needs root (tools/netbed.sh installs nftables if it is missing).
netbed: $(STAMP)
	PYTHON=$(BIN)/python tools/netbed.sh check $(or $(NODES),6) $(or $(NAT),2)

clean:
	rm -rf $(VENV) build dist *.egg-info $(DEMO_DIR)
