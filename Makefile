# mlinfra — one entry point for set-up, services, tests and the demo. See README.md.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: proto setup venv policy-venv engine wheelhouse grpcfront kube system services services-down doctor test test-unit test-integration check lint demo clean

## setup: system packages, .venv with the project and its dev extras, the Pulumi engine and plugins
setup: system venv policy-venv engine wheelhouse grpcfront kube

system:
	@bash scripts/install-system.sh

## policy-venv: the policy pack's own virtualenv (pulumi-policy pins protobuf 5; the project's onnx needs 6)
POLICY_STAMP := .venv-policy/.installed-$(shell cat mlinfra/policy/requirements.txt | sha256sum | cut -c1-12)
policy-venv: $(POLICY_STAMP)
$(POLICY_STAMP): mlinfra/policy/requirements.txt
	@test -x .venv-policy/bin/python || $(PY) -m venv .venv-policy
	@.venv-policy/bin/pip install -q --disable-pip-version-check -r mlinfra/policy/requirements.txt
	@rm -f .venv-policy/.installed-* && touch $@
	@echo "policy-venv: .venv-policy ready"

venv: $(STAMP)
$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found: install Python 3.11 (or run make PY=/path/to/python3.11)"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@
	@echo "venv: $(VENV) ready"

engine:
	@bash scripts/engine.sh

## kube: build the local clusters (control plane, kubelet, kube-proxy, etcd, kwok, metrics-server, pause) from Go modules
kube:
	@bash scripts/kube.sh

wheelhouse: venv
	@$(BIN)/python -m mlinfra.images --wheelhouse

grpcfront: venv
	@$(BIN)/python -m mlinfra.images --grpcfront

## services: start docker, the OCI registry, Azurite, Mosquitto and the base image (reuses what is running)
services: venv
	@$(BIN)/mlinfra services up

services-down:
	@$(BIN)/mlinfra services down

doctor: venv
	@$(BIN)/mlinfra doctor

## test: everything — the house's import contracts, unit tests, then the real engine against the real local services
test: setup services
	@$(BIN)/lint-imports --no-cache
	@$(BIN)/pytest -q -rs --durations=15 -n 2 --dist loadfile tests

test-unit: venv
	@$(BIN)/pytest -q tests/unit

check: venv lint
	@$(MAKE) --no-print-directory test

## lint: ruff, mypy and the import contracts (import-linter: runtime ↛ pulumi/mlinfra, library ↛ lab, no cycles)
lint: venv
	@$(BIN)/ruff check mlinfra components tests examples stacks benchmarks
	@$(BIN)/ruff format --check mlinfra components tests examples stacks benchmarks
	@$(BIN)/mypy
	@$(BIN)/lint-imports --no-cache

## demo: set up, start services, `pulumi up` the quickstart with local defaults and print its outputs
demo: setup services
	@$(BIN)/python examples/quickstart/run.py

## proto: regenerate the scoring server's gRPC messages from oip.proto: Python (components/scoring/mlinfra_scoring/oip)
## and Go (components/grpcfront/oippb, protoc-gen-go $(PROTOC_GEN_GO) = the protobuf version in its go.mod)
PROTOC_GEN_GO := v1.36.12
PROTOC_GEN_GO_DIR := $(HOME)/.cache/mlinfra/bin/protoc-gen-go-$(PROTOC_GEN_GO)
proto: venv
	@cd components/scoring/mlinfra_scoring/oip && ../../../../$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. oip.proto
	@GOBIN=$(PROTOC_GEN_GO_DIR) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO)
	@cd components/grpcfront && ../../$(BIN)/python -m grpc_tools.protoc -I../scoring/mlinfra_scoring/oip \
		--plugin=protoc-gen-go=$(PROTOC_GEN_GO_DIR)/protoc-gen-go --go_out=oippb --go_opt=paths=source_relative \
		--go_opt=Moip.proto=mlinfra.local/grpcfront/oippb oip.proto

clean:
	rm -rf $(VENV) .venv-policy .mlinfra *.egg-info
