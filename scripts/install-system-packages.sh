#!/bin/sh
# The Debian packages the browser test tier needs: Chromium, driven by Playwright through its
# executable_path (no browser download). `make test` runs this; it does nothing once they are there.
set -eu
# Debian's redis-server for the cross-host budget tests (they start their own on 127.0.0.1).
if ! command -v redis-server >/dev/null 2>&1; then
    REDIS_FIX="apt-get update && apt-get install -y --no-install-recommends redis-server"
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "The Redis tests need Debian's redis-server. Install it with: sudo sh -c '$REDIS_FIX'" >&2
        exit 1
    fi
    echo "Installing Debian's redis-server for the Redis tests (once per machine)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends redis-server >/dev/null
    }
fi
CHROMIUM="${GEMINI_TEST_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
FIX="apt-get update && apt-get install -y --no-install-recommends chromium"
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "The browser tests need Debian's Chromium at $CHROMIUM. Install it with: sudo sh -c '$FIX'" >&2
    echo "(or point GEMINI_TEST_CHROMIUM at a Chromium binary)" >&2
    exit 1
fi
echo "Installing Debian's chromium for the browser tests (once per machine)"
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet; an existing one may have stale ones.
apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends chromium >/dev/null
}
