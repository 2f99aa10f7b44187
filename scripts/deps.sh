#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer on the local machine (starting them,
# or installing them with apt-get, where needed) and that the diesel CLI is
# there for the schema check. Prints what it does; exits non-zero with a clear
# message when it cannot.
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_HOST=127.0.0.1 REDIS_PORT=6379
say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_updated=""
apt_install() {
  command -v apt-get >/dev/null || return 1
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq || return 1; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v cargo >/dev/null || die "cargo is not installed: install Rust from https://rustup.rs (1.89 or newer)"

# --- PostgreSQL -------------------------------------------------------------
pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }
if ! command -v pg_isready >/dev/null; then
  say "PostgreSQL is not installed; installing it with apt-get"
  apt_install postgresql postgresql-client || die "could not install PostgreSQL: install PostgreSQL 15+ and run it on $PG_HOST:$PG_PORT with trust auth for user postgres"
  fresh_pg=1
fi
if ! pg_ready; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    if [ -n "${fresh_pg:-}" ]; then
      # A cluster we just installed: let local tools in without a password (a dev machine).
      hba=/etc/postgresql/$version/main/pg_hba.conf
      as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/; s/^(local\s+all\s+all\s+)\S+/\1trust/' "$hba" || true
    fi
    say "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
  pg_ready || die "PostgreSQL does not answer on $PG_HOST:$PG_PORT; start it (pg_ctlcluster <version> main start) and try again"
fi
psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -Atc 'select 1' >/dev/null 2>&1 \
  || die "PostgreSQL answers but user postgres cannot log in without a password from $PG_HOST: allow trust auth for local connections, or set DATABASE_URL and ASSAY_TEST_ADMIN_DATABASE_URL"
say "PostgreSQL is up on $PG_HOST:$PG_PORT"

# --- Redis ------------------------------------------------------------------
redis_ready() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }
if ! command -v redis-server >/dev/null; then
  say "Redis is not installed; installing it with apt-get"
  apt_install redis-server || die "could not install Redis: install Redis 7 and run it on $REDIS_HOST:$REDIS_PORT"
fi
if ! redis_ready; then
  say "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis_dir=/var/lib/redis; [ -w "$redis_dir" ] || redis_dir=/tmp
  redis_log=/var/log/redis/ci.log; [ -w /var/log/redis ] || redis_log=/tmp/assay-redis.log
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$redis_dir" --logfile "$redis_log" || true
  for _ in $(seq 1 20); do redis_ready && break; sleep 0.5; done
  redis_ready || die "Redis does not answer on $REDIS_HOST:$REDIS_PORT; start redis-server and try again"
fi
say "Redis is up on $REDIS_HOST:$REDIS_PORT"

# --- diesel CLI (for `make schema-check`) -------------------------------------
if ! command -v diesel >/dev/null && [ ! -x "$HOME/.cargo/bin/diesel" ]; then
  if [ ! -e /usr/include/postgresql/libpq-fe.h ]; then
    say "installing libpq-dev (the diesel CLI links libpq)"
    apt_install libpq-dev || die "could not install libpq-dev, which the diesel CLI needs"
  fi
  say "installing the diesel CLI (cargo install, a few minutes once)"
  cargo install diesel_cli --version 2.3.14 --no-default-features --features postgres --locked --quiet \
    || die "could not install the diesel CLI"
fi
say "diesel CLI is installed"

# --- promtool (for the rule and metric checks in `make test`) ---------------
# From Debian's prometheus package; only its promtool is wanted. The package
# would start a Prometheus server where systemd runs (it does not in
# containers): stop and disable it, so nothing listens on 9090 behind our back.
if ! command -v promtool >/dev/null; then
  say "installing promtool (Debian's prometheus package; its server is not started)"
  # policy-rc.d exit 101 tells maintainer scripts not to start services.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null && as_root chmod +x "$policy" && remove_policy=1
  fi
  apt_install --no-install-recommends prometheus || install_failed=1
  [ -n "${remove_policy:-}" ] && as_root rm -f "$policy"
  [ -z "${install_failed:-}" ] || die "could not install promtool: install Debian's prometheus package (or put promtool on PATH)"
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  if command -v service >/dev/null && [ -x /etc/init.d/prometheus ]; then
    as_root service prometheus stop >/dev/null 2>&1 || true
  fi
  if pgrep -x prometheus >/dev/null 2>&1; then
    say "warning: a prometheus server is running; Assay's tests do not need it (stop it if you did not mean to run one)"
  fi
fi
say "promtool is installed ($(promtool --version 2>&1 | head -n1))"

# --- schemathesis (the API contract test in `make test`) --------------------
# From PyPI into its own virtualenv, once; the test finds it there (or at
# $ASSAY_SCHEMATHESIS).
SCHEMATHESIS_VENV="$HOME/.cache/assay/schemathesis-venv"
SCHEMATHESIS_VERSION=4.32.5
if [ -z "${ASSAY_SCHEMATHESIS:-}" ] && [ ! -x "$SCHEMATHESIS_VENV/bin/schemathesis" ]; then
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    say "installing python3-venv (for schemathesis' virtualenv)"
    apt_install python3-venv python3-pip || die "could not install python3-venv: install Python 3.10+ with venv"
  fi
  say "installing schemathesis $SCHEMATHESIS_VERSION into $SCHEMATHESIS_VENV"
  rm -rf "$SCHEMATHESIS_VENV"
  python3 -m venv "$SCHEMATHESIS_VENV" || die "could not create a virtualenv at $SCHEMATHESIS_VENV"
  "$SCHEMATHESIS_VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION" \
    || die "could not install schemathesis from PyPI"
fi
say "schemathesis is installed ($("${ASSAY_SCHEMATHESIS:-$SCHEMATHESIS_VENV/bin/schemathesis}" --version 2>&1 | head -n1))"

# --- Chromium and chromedriver (the web viewer's browser tests) ---------------
# Debian's packages: chromedriver must match the browser's version, and the
# packages keep them together.
if [ -n "${ASSAY_CHROMIUM:-}" ] && [ -n "${ASSAY_CHROMEDRIVER:-}" ]; then
  say "browser tests use $ASSAY_CHROMIUM and $ASSAY_CHROMEDRIVER"
  exit 0
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  say "installing Chromium and chromedriver (Debian's chromium and chromium-driver) for the browser tests"
  apt_install chromium chromium-driver \
    || die "could not install chromium and chromium-driver with apt-get: install them (or set ASSAY_CHROMIUM and ASSAY_CHROMEDRIVER to a matching pair)"
fi
command -v chromium >/dev/null && command -v chromedriver >/dev/null \
  || die "chromium or chromedriver is still missing after installing: the browser tests need both on PATH"
say "Chromium is installed ($(chromium --version 2>/dev/null | head -n1))"
