#!/bin/sh
# The Debian packages the test tiers need; `make test` runs this and it does nothing once they are there:
# - Chromium for the browser tier, driven by Playwright through its executable_path (no browser download);
# - redis-server for the cross-host budget tests;
# - PostgreSQL, Redis and libfaketime for the cluster tier (CeleryExecutor, two workers, one of them with
#   a skewed clock). The tests start PostgreSQL and Redis by hand in temp dirs on 127.0.0.1 (PostgreSQL
#   as the `postgres` user the package creates); the packages' system services are never used.
set -eu
CHROMIUM="${GEMINI_TEST_CHROMIUM:-/usr/bin/chromium}"
MISSING=""
[ -x "$CHROMIUM" ] || MISSING="$MISSING chromium"
# Any installed major version: the tests look for /usr/lib/postgresql/*/bin/initdb.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || MISSING="$MISSING postgresql"
command -v redis-server >/dev/null 2>&1 || MISSING="$MISSING redis-server"
# The `faketime` package brings libfaketime (the LD_PRELOAD library the tests use) with it.
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || MISSING="$MISSING faketime"
if [ -z "$MISSING" ]; then
    exit 0
fi
FIX="apt-get update && apt-get install -y --no-install-recommends$MISSING"
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "The test tiers need Debian's$MISSING. Install with: sudo sh -c '$FIX'" >&2
    case "$MISSING" in *chromium*) echo "(or point GEMINI_TEST_CHROMIUM at a Chromium binary)" >&2 ;; esac
    exit 1
fi
echo "Installing Debian's$MISSING for the test tiers (once per machine)"
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet; an existing one may have stale ones.
# shellcheck disable=SC2086 # the package names are meant to split
apt-get install -y -q --no-install-recommends $MISSING >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends $MISSING >/dev/null
}
