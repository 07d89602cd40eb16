# Quick start: `make demo` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := var/demo
DEMO_CONFIG := $(DEMO)/releaser.toml
RELEASER := $(BIN)/releaser --config $(DEMO_CONFIG)

.PHONY: venv demo demo-fleet test lint bench stress clean install-systemd uninstall-systemd systemd-image

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
	$(BIN)/python -m tests.sample $(DEMO)/output/tags.db --rows 140000 --seed 1
	$(RELEASER) init
	$(RELEASER) publish $(DEMO)/output/tags.db --note "first build"
	$(BIN)/python -m tests.sample $(DEMO)/output/tags.db --rows 141000 --seed 2
	$(RELEASER) publish $(DEMO)/output/tags.db --note "second build"
	$(RELEASER) status
	$(RELEASER) history
	$(RELEASER) rollback --reason "demo rollback"
	$(RELEASER) status
	@echo "demo store: $(DEMO) (the app would open $(DEMO)/app/tags.db)"

# a local SeaweedFS, 3 agents, two pushes, a fleet rollback, `fleet status`; stops all
demo-fleet: venv
	rm -rf var/demo-fleet
	$(BIN)/python -m tests.fleetdemo var/demo-fleet

# -n 4 on 2 cores: most tests wait (on subprocesses, monitors, agents, systemd, weed,
# prometheus), so four workers keep two cores busy; measured back to back on an idle 2-core
# machine: 152.6 s with -n 3, 134.6 s with -n 4 (173.6 s with two busy loops beside it)
# env -u: the suite starts ~450 `releaser` processes; where PYTHONDONTWRITEBYTECODE is set
# (this sandbox sets it) each one compiled releaser/ from source again (~50 ms CPU apiece)
# TMPDIR on tmpfs where the machine has one: the tests' stores fsync on every publish, and on
# this VM's disk those waits were half the wall time of a two-release fixture. The files are
# the same real SQLite files; no test can (or does) test durability across a power cut.
# Only failed tests' folders are kept, so a run leaves no RAM behind.
TEST_TMPDIR ?= $(shell [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm)
test: venv
	env -u PYTHONDONTWRITEBYTECODE $(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR)) \
	    $(BIN)/python -m pytest -n 4 --dist worksteal -q -m "not stress and not bench" \
	    -o tmp_path_retention_policy=failed

# The Debian tree tests/test_systemd_real.py boots (debootstrap, 1-2 min, cached under
# /var/cache/releaser-test keyed on its package list); .ci/run builds it before `make test`.
systemd-image:
	$(PYTHON) -m tests.nspawn build-image

lint: venv
	$(BIN)/ruff check releaser tests

bench: venv
	$(BIN)/python -m pytest -q -s -m bench -p no:xdist --timeout 3600
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/fleet_bench.py
	$(BIN)/python bench/degraded_rollback.py
	$(BIN)/python bench/history.py

stress: venv
	$(BIN)/python -m pytest -q -m stress --timeout 1800

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache

# Units into /etc/systemd/system, the default config into /etc/releaser (never
# overwritten), the `releaser` system user, and releaser itself into its own venv at
# /opt/releaser/.venv (what the units' ExecStart runs).
# The venv gets no pip of its own when the system has one (python3-pip) that can install
# into it (`pip --python`, pip >= 22.3): ensurepip would cost ~5 s of CPU on every install
# (it installs and byte-compiles pip and setuptools); else ensurepip as before.
# DESTDIR=/some/dir installs units and config into a staging tree (no user, no venv,
# no daemon-reload).
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
RELEASER_CONF_DIR ?= /etc/releaser
RELEASER_PREFIX ?= /opt/releaser
RELEASER_GROUP ?= releasers
install-systemd:
	@# the same source as last time: no reinstall (a rerun needs no network)
	@if [ -z "$(DESTDIR)" ]; then \
	    src=$$(cat pyproject.toml README.md $$(find releaser -name '*.py' | sort) | sha256sum); \
	    if [ -x $(RELEASER_PREFIX)/.venv/bin/releaser ] && \
	       [ "$$(cat $(RELEASER_PREFIX)/.venv/.releaser-source 2>/dev/null)" = "$$src" ]; then \
	        echo "releaser in $(RELEASER_PREFIX)/.venv is up to date"; \
	    else \
	        echo "installing releaser into $(RELEASER_PREFIX)/.venv"; \
	        $(PYTHON) -m venv --without-pip $(RELEASER_PREFIX)/.venv && \
	        if $(PYTHON) -m pip --python $(RELEASER_PREFIX)/.venv/bin/python --version >/dev/null 2>&1; \
	        then pip="$(PYTHON) -m pip --python $(RELEASER_PREFIX)/.venv/bin/python"; \
	        else $(RELEASER_PREFIX)/.venv/bin/python -m ensurepip --default-pip >/dev/null && \
	             pip="$(RELEASER_PREFIX)/.venv/bin/python -m pip"; fi && \
	        $$pip install --quiet --upgrade . && \
	        echo "$$src" > $(RELEASER_PREFIX)/.venv/.releaser-source; \
	    fi; \
	fi
	@if [ -z "$(DESTDIR)" ] && ! getent passwd releaser >/dev/null; then \
	    echo "creating system user releaser"; \
	    useradd --system --user-group --home-dir /var/lib/releaser --no-create-home \
	        --shell /usr/sbin/nologin --comment "releaser service" releaser; \
	fi
	@# users and permissions (README "Users and permissions"): group $(RELEASER_GROUP) may
	@# publish and roll back; unit_paths makes the store and live folder releaser:$(RELEASER_GROUP) 2775
	@if [ -z "$(DESTDIR)" ]; then \
	    getent group $(RELEASER_GROUP) >/dev/null || { echo "creating group $(RELEASER_GROUP)"; \
	        groupadd --system $(RELEASER_GROUP); }; \
	    usermod -a -G $(RELEASER_GROUP) releaser; \
	fi
	install -d -m 0755 $(DESTDIR)$(SYSTEMD_UNIT_DIR) $(DESTDIR)$(RELEASER_CONF_DIR)
	install -m 0644 systemd/*.service $(DESTDIR)$(SYSTEMD_UNIT_DIR)/
	@if [ -e $(DESTDIR)$(RELEASER_CONF_DIR)/releaser.toml ]; then \
	    echo "keeping existing $(DESTDIR)$(RELEASER_CONF_DIR)/releaser.toml"; \
	else \
	    install -m 0644 config/releaser.toml $(DESTDIR)$(RELEASER_CONF_DIR)/releaser.toml; \
	fi
	@if [ -z "$(DESTDIR)" ]; then \
	    $(RELEASER_PREFIX)/.venv/bin/python -m releaser.unit_paths \
	        --config $(RELEASER_CONF_DIR)/releaser.toml --unit-dir $(SYSTEMD_UNIT_DIR) \
	        --group $(RELEASER_GROUP) && \
	    if [ ! -e /usr/local/bin/releaser ] || [ -L /usr/local/bin/releaser ]; then \
	        ln -sfn $(RELEASER_PREFIX)/.venv/bin/releaser /usr/local/bin/releaser; fi; \
	fi
	@# init as the service user sets every mode in the store (idempotent; repairs old stores)
	@if [ -z "$(DESTDIR)" ]; then \
	    runuser -u releaser -- $(RELEASER_PREFIX)/.venv/bin/releaser \
	        --config $(RELEASER_CONF_DIR)/releaser.toml init \
	    || echo "warning: releaser init as user releaser failed; run it once the config is right"; \
	fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed: $(notdir $(wildcard systemd/*.service)); next: systemctl enable --now releaser-monitor"

# Stops and removes the units, their drop-ins, /usr/local/bin/releaser and the venv;
# keeps the config, the store with its releases and state.db, and the releaser user.
uninstall-systemd:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	    systemctl disable --now $(notdir $(wildcard systemd/*.service)) 2>/dev/null || true; fi
	for unit in $(notdir $(wildcard systemd/*.service)); do \
	    rm -f $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$unit $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$unit.d/50-paths.conf; \
	    rmdir $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$unit.d 2>/dev/null || true; \
	done
	@if [ -z "$(DESTDIR)" ]; then \
	    if [ -L /usr/local/bin/releaser ] && [ "$$(readlink /usr/local/bin/releaser)" = "$(RELEASER_PREFIX)/.venv/bin/releaser" ]; then \
	        rm -f /usr/local/bin/releaser; fi; \
	    rm -rf $(RELEASER_PREFIX)/.venv; rmdir $(RELEASER_PREFIX) 2>/dev/null || true; \
	fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "uninstalled; kept $(RELEASER_CONF_DIR), the store (root in the config) and the releaser user"
