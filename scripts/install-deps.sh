#!/usr/bin/env bash
# Installs the host packages iac's build, bootstrap and tests need (idempotent; Debian/Ubuntu).
# mmdebstrap builds the offline base image; git serves local test repos; python3-pip fetches wheels;
# docker-registry is the registry the swarm test pushes to (the test runs its own on a free
# loopback port; the package's system service is not used); postgresql is the server the history
# store's tests start in a temporary directory (its own cluster service is not used either);
# chromium and chromium-driver are the headless browser the console's browser tests drive.
set -euo pipefail
need=()
for pair in mmdebstrap:mmdebstrap git:git unzip:unzip curl:curl docker-registry:docker-registry; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Installing the package may start its service (a registry on :5000 for everyone); the tests
  # start their own, so the one this script just installed is stopped and not started at boot.
  if [[ " ${need[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null 2>&1 \
     && systemctl is-enabled docker-registry >/dev/null 2>&1; then
    $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
  if [[ " ${need[*]} " == *" postgresql "* ]] && command -v systemctl >/dev/null 2>&1 \
     && systemctl is-enabled postgresql >/dev/null 2>&1; then
    $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
  fi
fi
command -v docker >/dev/null 2>&1 || { echo "docker is required (a running Docker engine)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "the Docker engine is not reachable (is dockerd running? permissions?)" >&2; exit 1; }
echo "host dependencies ok"
