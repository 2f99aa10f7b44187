#!/usr/bin/env bash
# Fails when core/src/db/schema.rs differs from what the migrations produce:
# migrates a scratch database with assay-api and asks `diesel print-schema`.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"
api=${1:?usage: schema-check.sh <path to assay-api>}
db="assay_schema_check_$$"
admin="postgres://postgres@127.0.0.1:5432"
psql "$admin/postgres" -qc "CREATE DATABASE $db"
trap 'psql "$admin/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
DATABASE_URL="$admin/$db" RUST_LOG=warn "$api" migrate
generated=$(mktemp)
diesel print-schema --database-url "$admin/$db" > "$generated"
if ! diff -u core/src/db/schema.rs "$generated"; then
  echo "error: core/src/db/schema.rs is stale: run 'make schema' and commit it" >&2
  exit 1
fi
echo "==> core/src/db/schema.rs matches the migrations"
