# Quick start: `make demo` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := var/demo
DEMO_CONFIG := $(DEMO)/releaser.toml
RELEASER := $(BIN)/releaser --config $(DEMO_CONFIG)

.PHONY: venv demo test lint bench stress clean install-systemd

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: venv
	rm -rf $(DEMO)
	mkdir -p $(DEMO)/output
	sed -e 's|^live_path = .*|live_path = "app/tags.db"|' -e 's|^root = .*|root = "releaser"|' \
	    config/releaser.toml > $(DEMO_CONFIG)
	$(BIN)/python -m releaser.sample $(DEMO)/output/tags.db --rows 140000 --seed 1
	$(RELEASER) init
	$(RELEASER) publish $(DEMO)/output/tags.db --note "first build"
	$(BIN)/python -m releaser.sample $(DEMO)/output/tags.db --rows 141000 --seed 2
	$(RELEASER) publish $(DEMO)/output/tags.db --note "second build"
	$(RELEASER) status
	$(RELEASER) history
	$(RELEASER) rollback --reason "demo rollback"
	$(RELEASER) status
	@echo "demo store: $(DEMO) (the app would open $(DEMO)/app/tags.db)"

test: venv
	$(BIN)/python -m pytest -n 2 -q -m "not stress and not bench"

lint: venv
	$(BIN)/ruff check releaser tests

bench: venv
	$(BIN)/python -m pytest -q -s -m bench -p no:xdist --timeout 3600

stress: venv
	$(BIN)/python -m pytest -q -m stress --timeout 1800

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache
