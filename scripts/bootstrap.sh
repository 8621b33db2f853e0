#!/usr/bin/env bash
# Installs what this machine lacks to build, test and demo PFS, then the workspace
# dependencies. Idempotent: a second run installs nothing and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'bootstrap: %s\n' "$*"; }

missing=()
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
if [ "${PFS_BOOTSTRAP_LSYNCD:-0}" = 1 ]; then
  command -v lsyncd >/dev/null 2>&1 || missing+=(lsyncd)
fi

if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${missing[*]} and no apt-get here: install them with your package manager and run again" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  say "installing ${missing[*]} from Debian packages"
  $sudo apt-get update -qq
  # A policy-rc.d that says "no" keeps the etcd package from starting a system-wide etcd on 2379
  # while it installs (tests and the demo start their own; a node started by hand would find
  # that one). Only one made here is removed again, however the install ends.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

want_pnpm=$(node -p "require('./package.json').packageManager.split('@')[1]")
have_pnpm=$(pnpm --version 2>/dev/null || true)
if [ "$have_pnpm" != "$want_pnpm" ]; then
  say "installing pnpm $want_pnpm"
  npm install -g "pnpm@$want_pnpm" --no-fund --no-audit --loglevel=error >/dev/null
fi

say "installing workspace dependencies"
pnpm install --frozen-lockfile --reporter=silent
say "ready: rsync $(rsync --version | head -1 | awk '{print $3}'), etcd $(etcd --version | head -1 | awk '{print $3}'), node $(node --version), pnpm $(pnpm --version)"
