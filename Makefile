# spawner — see README.md. `make help` lists the targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# The workspace's modules (go.work); tool modules under scripts/ build on their own.
MODULES := apis generated common controller sidecar sweeper api-server e2e
PKGS := $(addsuffix /...,$(addprefix ./,$(MODULES)))
# Component suites that need a real cluster (build tag `cluster`); each runs its
# own controller/sweeper/api-server processes in namespaces of its own.
CLUSTER_TEST_PKGS := ./e2e/crd/... ./controller/test/... ./sweeper/test/... ./api-server/test/...

SPAWNER_CLUSTER_DIR ?= /var/lib/spawner-localcluster
export KUBECONFIG ?= $(SPAWNER_CLUSTER_DIR)/kubeconfig
export SPAWNER_CACHE ?= $(HOME)/.cache/spawner
export PATH := $(SPAWNER_CACHE)/bin:$(PATH)

.PHONY: help
help: ## show this list
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: build
build: ## compile every component and test helper
	go build $(PKGS)

.PHONY: generate
generate: ## regenerate deepcopy, clientset/listers/informers/applyconfigurations and the CRD from apis/
	scripts/update-codegen.sh

.PHONY: fmt
fmt: ## gofmt every Go file
	gofmt -w $(MODULES) scripts

.PHONY: vet
vet: ## go vet, including the cluster-tagged tests
	go vet $(PKGS)
	go vet -tags cluster $(PKGS)

.PHONY: verify
verify: ## fail on stale generated code or CRD, unformatted files, vet findings, shellcheck findings in scripts/
	scripts/verify-codegen.sh
	scripts/verify-shell.sh
	@unformatted="$$(gofmt -l $(MODULES) scripts)"; if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files need formatting (run make fmt):" >&2; echo "$$unformatted" >&2; exit 1; fi
	$(MAKE) --no-print-directory vet

.PHONY: test
test: verify test-unit test-cluster test-kind-in-ci ## everything CI runs: verify, unit tests, all real-cluster tests, then the e2e suite on kind (1 and 3 nodes)

.PHONY: test-unit
test-unit: ## unit and loopback integration tests (no cluster needed)
	go test -count=1 $(PKGS)
	for m in scripts/imagebuilder scripts/kind; do (cd $$m && GOWORK=off go test -count=1 ./...); done
	$(MAKE) --no-print-directory fuzz-brief

# The sidecar's fuzz targets (request head, response head, chunked bodies).
# A crasher's input is written to sidecar/proxy/testdata/fuzz/ and is
# committed with its fix, so it stays in the seed corpus.
FUZZ_TARGETS := FuzzRequestHead FuzzResponseHead FuzzChunkedBody

.PHONY: fuzz-brief
fuzz-brief: ## run each sidecar fuzz target for 5 s
	for f in $(FUZZ_TARGETS); do go test -run '^$$' -fuzz "^$$f\$$" -fuzztime 5s ./sidecar/proxy/; done

.PHONY: test-cluster
test-cluster: ## the local-cluster test, then every -tags cluster suite against a running cluster with fresh images
	scripts/test-localcluster.sh
	scripts/cluster-up.sh
	scripts/build-images.sh
	scripts/ensure-browser.sh # api-server/test's origin isolation test drives Chromium too
	for pkg in $(CLUSTER_TEST_PKGS); do \
		echo "==> go test -tags cluster $$pkg"; go test -count=1 -tags cluster -parallel 8 -timeout 20m $$pkg; done
	$(MAKE) --no-print-directory e2e

.PHONY: e2e
e2e: ## deploy spawner from deploy/local, then run the end-to-end suite (a browser test included) against the cluster KUBECONFIG points at
	scripts/ensure-browser.sh
	scripts/deploy.sh
	go test -count=1 -tags cluster -timeout 30m ./e2e/lifecycle/...

.PHONY: bench-e2e
bench-e2e: ## spawn latency vs raw pods, burst, idle→swept delay, then warm pools (bench-pool); writes docs/benchmarks.md
	scripts/deploy.sh
	SPAWNER_BENCH_REPORT=$(CURDIR)/docs/benchmarks.md go test -count=1 -tags cluster -timeout 90m -v -run 'TestSpawnLatencyAgainstRawPods|TestWarmPoolAgainstColdSpawns' ./e2e/bench/

.PHONY: bench-pool
bench-pool: ## warm claims vs cold spawns and raw Pods (sequential, refill, bursts, idle cost of a warm pod); writes its section of docs/benchmarks.md
	scripts/deploy.sh
	SPAWNER_BENCH_REPORT=$(CURDIR)/docs/benchmarks.md go test -count=1 -tags cluster -timeout 60m -v -run TestWarmPoolAgainstColdSpawns ./e2e/bench/

# DENSITY_CAP (200) bounds the backends spawned; the report lands in docs/density.md.
DENSITY_CAP ?= 200
.PHONY: bench-density
bench-density: ## fill the local node with idle backends (20 at a time, cap DENSITY_CAP): count, per-backend CPU/memory at rest, sweep delay; writes docs/density.md
	scripts/deploy.sh
	SPAWNER_BENCH_DENSITY=1 SPAWNER_BENCH_DENSITY_CAP=$(DENSITY_CAP) SPAWNER_BENCH_DENSITY_REPORT=$(CURDIR)/docs/density.md \
		go test -count=1 -tags cluster -timeout 60m -v -run TestDensity ./e2e/bench/

# SOAK_BACKENDS (100) and SOAK_MINUTES (20) size the soak; its table lands in SOAK_REPORT.
SOAK_BACKENDS ?= 100
SOAK_MINUTES ?= 20
SOAK_REPORT ?= $(CURDIR)/_output/soak.md
.PHONY: soak
soak: ## SOAK_BACKENDS backends with scripted WebSocket/SSE clients for SOAK_MINUTES while the controller, an api-server replica and the sweeper are killed; false/missed sweeps, client errors, activity write rate (not in make test)
	scripts/deploy.sh
	mkdir -p $(dir $(SOAK_REPORT))
	SPAWNER_SOAK=1 SPAWNER_SOAK_BACKENDS=$(SOAK_BACKENDS) SPAWNER_SOAK_MINUTES=$(SOAK_MINUTES) SPAWNER_SOAK_REPORT=$(SOAK_REPORT) \
		go test -count=1 -tags cluster -timeout $$(( $(SOAK_MINUTES) + 30 ))m -v -run TestSoak ./e2e/bench/

.PHONY: cluster-up
cluster-up: ## a real single-node cluster: kind when Docker works, otherwise built from source here
	scripts/cluster-up.sh

.PHONY: cluster-down
cluster-down: ## stop the cluster and put the machine back as it was
	scripts/cluster-down.sh

.PHONY: images
images: ## build spawner's images without Docker and load them into the cluster
	scripts/build-images.sh

.PHONY: up
up: ## cluster + images + spawner deployed + a demo backend; prints its URL
	scripts/up.sh

.PHONY: down
down: ## remove everything `make up` created
	scripts/down.sh

.PHONY: kind-up
kind-up: ## like `make up`, but always on kind (starts Docker and installs kind when missing; SPAWNER_KIND_NODES=3 for 2 workers)
	SPAWNER_CLUSTER=kind scripts/up.sh

# test-kind's own cluster directory, never the local cluster's (both can be up at once).
SPAWNER_KIND_TEST_DIR ?= /var/lib/spawner-kind
.PHONY: test-kind
test-kind: ## e2e on kind with 1 and 3 nodes (multi-node tests included), each followed by `make down` and a leak check, beside the local cluster (docs/kind.md)
	SPAWNER_CLUSTER_DIR=$(SPAWNER_KIND_TEST_DIR) KUBECONFIG=$(SPAWNER_KIND_TEST_DIR)/kubeconfig scripts/test-kind.sh

# make test's kind step, off by default: it fits CI's 90 min (~25 min, docs/kind.md), but its
# 3-node run on current main failed twice under load (a containerd shim timeout inside a node, the
# browser test) and is not yet green again; SPAWNER_TEST_KIND=1 runs it as part of make test.
SPAWNER_TEST_KIND ?= 0
.PHONY: test-kind-in-ci
test-kind-in-ci:
	if [ "$(SPAWNER_TEST_KIND)" = 0 ]; then echo "==> SPAWNER_TEST_KIND=0: kind left out of make test"; else $(MAKE) --no-print-directory test-kind; fi
