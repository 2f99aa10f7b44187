# Assay: `make demo` runs the main job end to end; `make test` runs every test.
# Both install or start what they need (`make deps`).

CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
BIN := $(CARGO_TARGET_DIR)/debug
DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/assay
export DATABASE_URL

.PHONY: deps build migrate demo demo-ui test bench schema-check schema lint fmt clean

## deps: check that PostgreSQL and Redis answer (start or install them if not)
deps:
	@bash scripts/deps.sh

## build: build every binary (debug)
build:
	$(CARGO) build --workspace --bins

## migrate: apply migrations to DATABASE_URL (`assay-api migrate` creates it if missing)
migrate: deps build
	$(BIN)/assay-api migrate

## demo: start the API and two workers, run a 200-item evaluation over two mock models, stop
demo: deps build
	@bash scripts/demo.sh

## demo-ui: the demo, then keep the API and workers running and print the viewer's URL
demo-ui: deps build
	@DEMO_UI=1 bash scripts/demo.sh

## test: unit, integration and end-to-end tests against local PostgreSQL and Redis
test: deps build schema-check
	@bash scripts/test.sh

## bench: run the benchmarks and append their figures to BENCHMARKS.md (ONLY=viewer,cli,... for some cases)
bench: deps
	@ONLY="$(ONLY)" bash scripts/bench.sh

## schema-check: fail if core/src/db/schema.rs differs from what the migrations produce
schema-check: build
	@bash scripts/schema-check.sh $(BIN)/assay-api

## schema: regenerate core/src/db/schema.rs from the migrations
schema: build
	@db=assay_schema_$$$$; psql postgres://postgres@127.0.0.1:5432/postgres -qc "CREATE DATABASE $$db" \
		&& DATABASE_URL=postgres://postgres@127.0.0.1:5432/$$db $(BIN)/assay-api migrate \
		&& diesel print-schema --database-url postgres://postgres@127.0.0.1:5432/$$db > core/src/db/schema.rs; \
		psql postgres://postgres@127.0.0.1:5432/postgres -qc "DROP DATABASE IF EXISTS $$db WITH (FORCE)"

## lint: rustfmt check and clippy with warnings as errors
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## fmt: format the code
fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf .demo
