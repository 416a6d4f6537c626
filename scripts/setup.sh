#!/usr/bin/env bash
# Installs everything modelfleet needs on a fresh Debian machine, and nothing twice:
# Debian packages through apt-get, uv from the Python package index, then the locked
# Python environment in .venv. Caches (uv, Go) live outside the repository, so a
# second run on the same machine takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the Triton python-backend stub links Debian's libpython3.11 and
# imports Debian's numpy; Prometheus scrapes the dashboards' queries in tests; the test
# cluster's node runs pods with containerd, runc, the CNI plugins and iptables (for
# kube-proxy); mmdebstrap makes the images' Debian root filesystem.
debs=(libpython3.11 python3-numpy prometheus containerd runc containernetworking-plugins
  iptables mmdebstrap)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v go >/dev/null || { echo "setup: Go is needed to build the test control plane" >&2; exit 1; }

# uv, bootstrapped from the package index with the machine's Python.
UV_VERSION=0.13.8
if ! command -v uv >/dev/null || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

# The locked environment: vLLM's CPU build, Ray Serve, the operator's libraries,
# Triton's client and the test tools (requirements/cpu.txt, made by requirements/lock).
[ -x .venv/bin/python ] || uv venv --quiet --python 3.11 .venv
uv pip sync --quiet -p .venv requirements/cpu.txt
uv pip install --quiet -p .venv --no-deps -e .
