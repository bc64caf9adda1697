# One entry point for a fresh machine: `make serve` installs and starts, `make test` installs and tests.
PYTHON ?= python3
# the engine `make docker` starts where none answers (tests and the Docker sandbox use it)
ifeq ($(DOCKER_HOST)$(wildcard /var/run/docker.sock),)
export DOCKER_HOST := unix:///run/kernelagent-docker/docker.sock
endif
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install serve test lint bench doctor browser docker gateway

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/kernelagent serve

doctor: install
	$(BIN)/kernelagent doctor

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Debian's Chromium for the browser tests (Playwright drives it; its own download cannot work here)
browser:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

# Docker: an engine (installed and started here if none answers), the base, kernel and server
# images; a no-op when all is there (the builds hit their cache)
docker: install
	bash deploy/prepare-docker.sh

# Jupyter Enterprise Gateway in a virtualenv of its own, for the remote-kernel tests
gateway:
	bash deploy/prepare-gateway.sh

test: lint browser docker gateway
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/kernels.py --json bench/kernels.json
	$(BIN)/python bench/sessions.py --json bench/sessions.json
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/cpu.py --json bench/cpu.json
