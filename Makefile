# iac — developer entry points. `make bootstrap` installs everything the main job needs;
# `make test` runs every test (what .ci/run calls).
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
PREFIX ?= $(HOME)/.cargo/bin
FILE ?= examples/repos.local.yaml
export CARGO_TERM_COLOR ?= never

.PHONY: help bootstrap deps images agent install test test-deps fmt lint plan apply destroy bench bench-load soak clean-test-objects screenshots

help:
	@echo "make bootstrap   install host deps, build the static agent + iac, ensure base images"
	@echo "make test        run every test (unit, golden, real Envoy, real Docker, fuzz smoke)"
	@echo "make fmt|lint    rustfmt / clippy -D warnings / rustdoc -D warnings"
	@echo "make plan|apply|destroy FILE=repos.yaml   drive iac on a repos file"
	@echo "make bench       deploy benchmark vs docker compose (prints ratios)"
	@echo "make bench-load  data-plane latency/CPU at 500/1000/2000 req/s: direct, edge, mesh"
	@echo "make soak        15 minutes with a crash-looping service: fd and RSS growth of agents and iac serve"
	@echo "make screenshots refresh docs/console/*.png (the browser tests, headless Chromium)"

deps:
	@bash scripts/install-deps.sh

agent:
	@bash scripts/build-agent.sh

images: agent
	@bash scripts/bootstrap-images.sh

install: agent
	$(CARGO) build --release -p iac-bin
	@mkdir -p $(PREFIX)
	@install -m 0755 "$$($(CARGO) metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')/release/iac" $(PREFIX)/iac
	@install -m 0755 "$$(bash scripts/build-agent.sh)" $(PREFIX)/iac-agent
	@echo "installed $(PREFIX)/iac and $(PREFIX)/iac-agent"

bootstrap: deps install images
	@test -f .env || cp .env.example .env
	@echo "bootstrap done: try 'iac deploy --file examples/repos.local.yaml'"

test-deps: deps agent
	@bash scripts/install-envoy.sh
	@cargo fuzz --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz --version 0.13.2
	@cargo nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest --version 0.9.143
	@bash scripts/test-wheels.sh
	@python3 -m pip show -q kubernetes-validate >/dev/null 2>&1 || python3 -m pip install -q --disable-pip-version-check kubernetes-validate==1.37.0
	@bash scripts/bootstrap-images.sh --python 3.14 --swarm-node

# Tests under cargo-nextest (one process per test, several at once; groups, timeouts and the `ci`
# profile in .config/nextest.toml), then the doctests, which nextest does not run.
TEST_ENV := IAC_REQUIRE_ENVOY=1 IAC_REQUIRE_DOCKER=1 IAC_REQUIRE_K8S_VALIDATE=1 IAC_REQUIRE_POSTGRES=1 IAC_REQUIRE_BROWSER=1
NEXTEST_PROFILE ?= ci
# Every test process is handed the static agent test-deps built (IAC_AGENT_BIN), instead of each
# one asking cargo for it again.
test: test-deps
	agent="$$(bash scripts/build-agent.sh)" && $(TEST_ENV) IAC_AGENT_BIN="$$agent" $(CARGO) nextest run --workspace --profile $(NEXTEST_PROFILE) --no-fail-fast
	$(TEST_ENV) $(CARGO) test --workspace --doc
	@bash scripts/fuzz-smoke.sh
	@$(MAKE) --no-print-directory clean-test-objects

# Belt and braces: tests remove what they create by label; this catches anything a killed test left.
clean-test-objects:
	@ids=$$(docker ps -aq --filter label=iac.test 2>/dev/null); [ -z "$$ids" ] || docker rm -f $$ids >/dev/null
	@nets=$$(docker network ls -q --filter label=iac.test 2>/dev/null); [ -z "$$nets" ] || docker network rm $$nets >/dev/null
	@vols=$$(docker volume ls -q --filter label=iac.test 2>/dev/null); [ -z "$$vols" ] || docker volume rm $$vols >/dev/null
	@[ -z "$$(docker node inspect self --format '{{index .Spec.Labels "iac.test"}}' 2>/dev/null)" ] || docker swarm leave --force >/dev/null

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet

plan:
	iac plan --file $(FILE)

apply:
	iac deploy --file $(FILE)

destroy:
	iac destroy

bench:
	@bash scripts/bench-deploy.sh

bench-load:
	@bash scripts/bench-load.sh

soak:
	@bash scripts/soak.sh

# The console's pages at 1280 and 390 px, taken by the browser tests themselves.
screenshots: deps agent
	IAC_SCREENSHOTS=$(CURDIR)/docs/console IAC_REQUIRE_BROWSER=1 IAC_REQUIRE_DOCKER=1 $(CARGO) test -p iac-bin --test console_browser -- --test-threads 1
