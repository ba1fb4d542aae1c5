#!/usr/bin/env python3
"""Turns the output of `iac plan --json` (stdin) into an equivalent docker-compose file (stdout), for the
benchmark baseline (scripts/bench-deploy.sh): same images, command, env, mounts, published port,
privileges (capabilities, no-new-privileges: the sidecar needs NET_ADMIN for the pod's packet filter),
limits, and the Envoy sharing the app's network namespace. Compose prefixes container names with its
project, so both stacks can coexist.

    iac plan --json ... | python3 scripts/stack-to-compose.py <compose-project> <label> > compose.yml

Every service and the network carry the label `iac.bench=<label>` so a cleanup can find them.
Compose file format 2.4 (docker-compose 1.29 reads it; it is the last format with pids_limit and
memswap_limit outside `deploy:`)."""
import json
import sys

if len(sys.argv) != 3:
    sys.exit("usage: stack-to-compose.py COMPOSE_PROJECT LABEL < plan.json")
prefix, label = sys.argv[1], sys.argv[2]
# `iac plan --json` prints NDJSON progress events first; the plan is the last line.
lines = sys.stdin.read().strip().splitlines()
if not lines:
    sys.exit("stack-to-compose.py: no input (expected the output of `iac plan --json`)")
try:
    plan = json.loads(lines[-1])
    stack = plan["stack"]
except (ValueError, KeyError) as e:
    sys.exit(f"stack-to-compose.py: the last input line is not an `iac plan --json` result: {e}")
net = f"{prefix}-net"


def lit(v):
    """A literal for compose, which interpolates `$VAR` in every string: `$` is written `$$`."""
    if isinstance(v, str):
        return v.replace("$", "$$")
    if isinstance(v, list):
        return [lit(x) for x in v]
    if isinstance(v, dict):
        return {k: lit(x) for k, x in v.items()}
    return v


def hardening(c):
    """Compose keys for a ContainerSpec's privileges and limits (only what the spec sets)."""
    out = {}
    priv = c.get("privileges") or {}
    if priv.get("cap_drop"):
        out["cap_drop"] = priv["cap_drop"]
    if priv.get("cap_add"):
        out["cap_add"] = priv["cap_add"]
    if priv.get("no_new_privileges"):
        out["security_opt"] = ["no-new-privileges:true"]
    lim = c.get("limits") or {}
    if lim.get("pids"):
        out["pids_limit"] = lim["pids"]
    if lim.get("memory_bytes"):
        out["mem_limit"] = lim["memory_bytes"]
        out["memswap_limit"] = lim["memory_bytes"]
    return out


services = {}
for s in stack["services"]:
    app, envoy = s["app"], s["envoy"]
    a = s["service"]
    services[a] = {
        "image": app["image"],
        "environment": lit(app["env"]),
        "labels": {"iac.bench": label},
        "networks": {net: {"aliases": [a]}},
        # host_port null: an ephemeral port (the mesh port; an edge without a fixed `expose`).
        "ports": [
            f"{'[' + p['host_ip'] + ']' if ':' in p['host_ip'] else p['host_ip']}:{p['host_port'] or ''}:{p['container_port']}"
            for p in app["ports"]
        ],
        "volumes": [lit(f"{m['source']}:{m['target']}{':ro' if m['read_only'] else ''}") for m in app["mounts"]],
        "stop_grace_period": f"{app['stop_timeout_secs']}s",
        **hardening(app),
    }
    if app["cmd"]:
        services[a]["command"] = lit(app["cmd"])
    services[f"{a}-envoy"] = {
        "image": envoy["image"],
        "command": lit(envoy["cmd"]),
        "environment": lit(envoy["env"]),
        "labels": {"iac.bench": label},
        "network_mode": f"service:{a}",
        "volumes": [lit(f"{m['source']}:{m['target']}{':ro' if m['read_only'] else ''}") for m in envoy["mounts"]],
        "stop_grace_period": f"{envoy['stop_timeout_secs']}s",
        "depends_on": [a],
        **hardening(envoy),
    }
doc = {"version": "2.4", "services": services, "networks": {net: {"labels": {"iac.bench": label}}}}
# Compose reads YAML, and JSON is YAML: no PyYAML needed.
json.dump(doc, sys.stdout, indent=2, sort_keys=True)
print()
