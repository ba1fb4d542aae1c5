#!/usr/bin/env python3
"""Turns the output of `iac plan --json` (stdin) into an equivalent docker-compose file (stdout), for the
benchmark baseline (scripts/bench-deploy.sh): same images, command, env, mounts, published ports,
privileges (capabilities, no-new-privileges: the sidecar needs NET_ADMIN for the pod's packet filter),
limits, restart policies, and the pod's shared network namespace (whichever container the plan
makes its owner — the sidecar — is on the network; the other joins it with `network_mode:
service:…` and `depends_on`). Compose prefixes container names with its project, so both stacks can
coexist.

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


def mount(m):
    return lit(f"{m['source']}:{m['target']}{':ro' if m['read_only'] else ''}")


def port(p):
    # host_port null: an ephemeral port (the mesh port; an edge without a fixed `expose`).
    ip = f"[{p['host_ip']}]" if ":" in p["host_ip"] else p["host_ip"]
    return f"{ip}:{p['host_port'] or ''}:{p['container_port']}"


services = {}
for s in stack["services"]:
    a = s["service"]
    # Compose service names: the app is `<svc>`, the sidecar `<svc>-envoy`.
    names = {s["app"]["name"]: a, s["envoy"]["name"]: f"{a}-envoy"}
    for c in (s["envoy"], s["app"]):
        svc = {
            "image": c["image"],
            "environment": lit(c["env"]),
            "labels": {"iac.bench": label},
            "volumes": [mount(m) for m in c["mounts"]],
            "stop_grace_period": f"{c['stop_timeout_secs']}s",
            **hardening(c),
        }
        if c["cmd"]:
            svc["command"] = lit(c["cmd"])
        if c["ports"]:
            svc["ports"] = [port(p) for p in c["ports"]]
        if c.get("restart", "no") != "no":
            svc["restart"] = c["restart"]
        netmode = c["network"]
        if netmode["kind"] == "network":
            svc["networks"] = {net: {"aliases": netmode["aliases"]}}
        else:
            owner = names[netmode["name"]]
            svc["network_mode"] = f"service:{owner}"
            svc["depends_on"] = [owner]
        services[names[c["name"]]] = svc
doc = {"version": "2.4", "services": services, "networks": {net: {"labels": {"iac.bench": label}}}}
# Compose reads YAML, and JSON is YAML: no PyYAML needed.
json.dump(doc, sys.stdout, indent=2, sort_keys=True)
print()
