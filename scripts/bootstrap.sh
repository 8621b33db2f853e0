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
  # policy-rc.d keeps the etcd package from starting a system-wide etcd: tests and the demo start their own.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package starts a system etcd on 2379 where init allows it; PFS never uses it.

want_pnpm=$(node -p "require('./package.json').packageManager.split('@')[1]")
have_pnpm=$(pnpm --version 2>/dev/null || true)
if [ "$have_pnpm" != "$want_pnpm" ]; then
  say "installing pnpm $want_pnpm"
  npm install -g "pnpm@$want_pnpm" --no-fund --no-audit --loglevel=error >/dev/null
fi

say "installing workspace dependencies"
pnpm install --frozen-lockfile --reporter=silent
say "ready: rsync $(rsync --version | head -1 | awk '{print $3}'), etcd $(etcd --version | head -1 | awk '{print $3}'), node $(node --version), pnpm $(pnpm --version)"
