# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install, start the project-local Prefect server, run the main job
#   make test   create .venv, install, run the test suite
# The Prefect server is this checkout's own (home .prefect/, port 4200 or the next free one); choose its port with
# REGULARITY_PREFECT_PORT=4300 make demo (docs/server.md: "Port and home").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test bench up down server-start server-stop system-deps browser-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision are pinned: pip takes them from the local wheel cache where there is one
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# apt-get install the Debian packages $(2) unless the path $(1) exists; as root, or through sudo where
# there is one; otherwise (or without apt-get) say what to install and go on
define apt_install
	@if [ ! -e $(1) ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if command -v apt-get >/dev/null && [ "$$SUDO" != none ]; then \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(2); \
	  else echo "note: install Debian's $(2) (as root) for $(3)"; fi; \
	fi
endef

# Debian's dataset-fashion-mnist ships the Fashion-MNIST IDX files (offline).
system-deps:
	$(call apt_install,$(FASHION_MNIST),dataset-fashion-mnist,the Fashion-MNIST tests)

# Chromium for the browser test of the Prefect UI (chromium-driver pulls in chromium). Playwright drives
# /usr/bin/chromium, so `playwright install` (a download) is never needed.
browser-deps:
	$(call apt_install,/usr/bin/chromedriver,chromium chromium-driver,the browser test)

demo: $(STAMP) system-deps
	$(BIN)/regularity run cscore --config flows/configs/cscore.yaml

# -n auto: one pytest process per core; much of the suite waits on servers and subprocesses, and a second process
# fills that time. --dist loadfile keeps a file's tests in one process, so a module's shared run is made once.
# On 2 cores: 16 min in one process, 9 in two. At most 4: each process starts its own Prefect API server.
test: $(STAMP) system-deps browser-deps
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

bench: $(STAMP)
	$(BIN)/python -m bench.trainer

up: $(STAMP) system-deps
	$(BIN)/regularity up

down: $(STAMP)
	$(BIN)/regularity down

server-start: $(STAMP)
	$(BIN)/regularity server start

server-stop: $(STAMP)
	$(BIN)/regularity server stop
