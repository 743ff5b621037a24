#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: system packages (when root), then the virtual environment.
# The README's commands and .ci/run all go through here, so a stranger's machine gets what ours has.
set -euo pipefail
cd "$(dirname "$0")/.."

system_packages=(postgresql prometheus dataset-fashion-mnist docker-compose)
missing=()
for package in "${system_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing system packages (${missing[*]}); install them as root" >&2
  fi
fi

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints-cpu.txt -nt "$stamp" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints-cpu.txt -e ".[service,deepspeed,datasets,tables,ray,dev]"
  touch "$stamp"
fi
