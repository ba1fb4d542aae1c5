#!/bin/sh
# iac-swarm-node — entry point of the iac/swarm-node image (scripts/bootstrap-images.sh --swarm-node):
# Debian's Docker engine (docker.io) inside a container, to act as one node of a Docker Swarm in
# tests; or, with the argument `registry`, Debian's image registry (docker-registry) over plain HTTP
# on port 5000, storing under /var/lib/docker-registry.
#
# Engine mode needs a container that may run containers itself. `--privileged` is the usual way, but
# it asks for every capability the kernel knows, and an engine whose own bounding set lacks one (a VM
# without CAP_SYS_RESOURCE, say) then refuses to start it ("unable to apply caps: operation not
# permitted"). So the node runs with every capability it can get instead:
#   docker run --init --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined
#     --security-opt apparmor=unconfined --security-opt systempaths=unconfined
#     --device-cgroup-rule 'a *:* rwm' -v VOLUME:/var/lib/docker iac/swarm-node:bookworm [DOCKERD ARGS]
# and this script makes /sys and the cgroup (v1) hierarchies writable (they are mounted read-only
# without --privileged) before it starts dockerd. /var/lib/docker must be a volume: overlay2 cannot
# stack on the container's own overlay root.
#
# IAC_NODE_FORWARD="PORT=IP:PORT ..." forwards this node's 127.0.0.1:PORT to IP:PORT (iptables DNAT),
# so an image named 127.0.0.1:PORT/... — a registry the engine treats as insecure without any
# configuration — is pulled from a registry elsewhere on the network.
set -eu

die() { echo "iac-swarm-node: $*" >&2; exit 1; }

if [ "${1:-}" = registry ]; then
  mkdir -p /var/lib/docker-registry
  cat >/etc/docker/registry/iac.yml <<'EOF'
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  addr: :5000
EOF
  exec docker-registry serve /etc/docker/registry/iac.yml
fi

case "$(stat -f -c %T /var/lib/docker 2>/dev/null || echo missing)" in
  overlayfs|fuseblk|fuse|missing)
    die "/var/lib/docker must be a volume (-v NAME:/var/lib/docker): overlay2 cannot run on the container's overlay root" ;;
esac
if ! touch /sys/.iac-rw 2>/dev/null; then
  mount -o remount,rw /sys || die "cannot remount /sys read-write (is CAP_SYS_ADMIN granted and apparmor unconfined?)"
fi
rm -f /sys/.iac-rw 2>/dev/null || true
for d in /sys/fs/cgroup/*/; do
  [ -d "$d" ] || continue
  mount -o remount,rw,bind "$d" 2>/dev/null || mount -o remount,rw "$d" 2>/dev/null \
    || die "cannot remount $d read-write"
done

for f in ${IAC_NODE_FORWARD:-}; do
  port="${f%%=*}"
  to="${f#*=}"
  case "$port" in ''|*[!0-9]*) die "IAC_NODE_FORWARD entry '$f': expected PORT=IP:PORT" ;; esac
  case "$to" in
    *[!0-9.:]*|*:|*:*:*) die "IAC_NODE_FORWARD entry '$f': expected PORT=IP:PORT" ;;
    *.*.*.*:[0-9]*) ;;
    *) die "IAC_NODE_FORWARD entry '$f': expected PORT=IP:PORT" ;;
  esac
  sysctl -qw net.ipv4.conf.all.route_localnet=1
  iptables -t nat -A OUTPUT -d 127.0.0.1/32 -p tcp --dport "$port" -j DNAT --to-destination "$to"
  iptables -t nat -C POSTROUTING -s 127.0.0.1/32 ! -o lo -j MASQUERADE 2>/dev/null \
    || iptables -t nat -A POSTROUTING -s 127.0.0.1/32 ! -o lo -j MASQUERADE
done

exec dockerd --storage-driver overlay2 "$@"
