# barepod.linux entry points. `make demo` and `make test` are the two README commands.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
COLL_PARENT := $(VENV)/collections/ansible_collections/barepod
COLL := $(COLL_PARENT)/linux
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)
PYTEST_ARGS ?=

# Debian packages the modules, tests and benchmarks use.
DEB_PACKAGES := iptables iproute2 busybox-static util-linux procps psmisc kmod runc \
	containernetworking-plugins ca-certificates python3-venv gcc libc6-dev skopeo
# What only the tests, linters, benchmarks and the kind scenario need on top: docker-registry is the
# image tests' registry (openssl makes its TLS case's CA), podman the image_pull bench's peer.
DEB_TEST_PACKAGES := debootstrap docker.io rsync shellcheck strace docker-registry openssl podman

.PHONY: setup deps venv collection demo test unit integration docs lint sanity molecule bench reliability clean

setup: deps venv collection

deps:
	@missing=""; for p in $(DEB_PACKAGES) $(if $(filter test molecule bench reliability,$(MAKECMDGOALS)),$(DEB_TEST_PACKAGES)); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(BIN)/.installed

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

collection:
	@mkdir -p $(COLL_PARENT)
	@ln -sfn $(CURDIR) $(COLL)

demo: setup
	$(BIN)/ansible-playbook playbooks/demo.yml

unit: setup
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

integration: setup
	$(BIN)/pytest -q tests/integration $(PYTEST_ARGS)

docs: setup
	@for m in $$(ls plugins/modules/*.py | xargs -n1 basename | sed 's/\.py$$//'); do \
	  $(BIN)/ansible-doc barepod.linux.$$m >/dev/null || { echo "ansible-doc failed for $$m"; exit 1; }; \
	  echo "ansible-doc barepod.linux.$$m: ok"; done
	@for p in $$(ls plugins/lookup/*.py | xargs -n1 basename | sed 's/\.py$$//'); do \
	  $(BIN)/ansible-doc -t lookup barepod.linux.$$p >/dev/null || { echo "ansible-doc failed for lookup $$p"; exit 1; }; \
	  echo "ansible-doc -t lookup barepod.linux.$$p: ok"; done

lint: setup
	$(BIN)/ruff check plugins tests bench
	$(BIN)/ansible-lint

sanity: setup
	bash tests/sanity/run.sh

molecule: setup
	$(BIN)/molecule test -s default
	bash tools/start-dockerd.sh
	$(BIN)/molecule test -s kind

bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

RELIABILITY_LOG ?= $(CURDIR)/build/reliability.jsonl
BAREPOD_SOAK_CYCLES ?= 100
export BAREPOD_SOAK_CYCLES

# Faults, leaks (the soak), hostile input and escapes, then the evidence table.
reliability: setup
	@mkdir -p $(dir $(RELIABILITY_LOG)); rm -f $(RELIABILITY_LOG)
	BAREPOD_RELIABILITY_LOG=$(RELIABILITY_LOG) $(BIN)/pytest -q tests/reliability $(PYTEST_ARGS); rc=$$?; \
	$(BIN)/python tools/reliability_report.py $(RELIABILITY_LOG) --strict; rc2=$$?; \
	exit $$(( rc != 0 ? rc : rc2 ))

# Everything CI runs. Stops at the first failing step.
test: setup
	@mkdir -p $(dir $(RELIABILITY_LOG)); rm -f $(RELIABILITY_LOG)
	BAREPOD_RELIABILITY_LOG=$(RELIABILITY_LOG) $(BIN)/pytest tests/unit tests/integration tests/reliability $(PYTEST_ARGS)
	$(BIN)/python tools/reliability_report.py $(RELIABILITY_LOG) --strict
	$(MAKE) --no-print-directory docs
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory sanity
	$(MAKE) --no-print-directory molecule

clean:
	rm -rf $(VENV) .pytest_cache bench/results
