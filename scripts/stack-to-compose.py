#!/usr/bin/env python3
"""Turns the output of `iac plan --json` (stdin) into an equivalent docker-compose v2 file (stdout), for the
benchmark baseline: same images, env, mounts, published port, and the Envoy sharing the app's
network namespace. Container names get the compose project prefix so both can coexist."""
import json
import sys

prefix = sys.argv[1]
# `iac plan --json` prints NDJSON progress events first; the plan is the last line.
plan = json.loads(sys.stdin.read().strip().splitlines()[-1])
stack = plan["stack"]
net = f"{prefix}-net"
services = {}
for s in stack["services"]:
    app, envoy = s["app"], s["envoy"]
    a = f"{s['service']}"
    services[a] = {
        "image": app["image"],
        "environment": app["env"],
        "labels": {"iac.bench": prefix},
        "networks": {net: {"aliases": [s["service"]]}},
        # host_port null: an ephemeral port (the mesh port; an edge without a fixed `expose`).
        "ports": [
            f"{'[' + p['host_ip'] + ']' if ':' in p['host_ip'] else p['host_ip']}:{p['host_port'] or ''}:{p['container_port']}"
            for p in app["ports"]
        ],
        "stop_grace_period": f"{app['stop_timeout_secs']}s",
    }
    if app["cmd"]:
        services[a]["command"] = app["cmd"]
    services[f"{a}-envoy"] = {
        "image": envoy["image"],
        "command": envoy["cmd"],
        "labels": {"iac.bench": prefix},
        "network_mode": f"service:{a}",
        "volumes": [f"{m['source']}:{m['target']}{':ro' if m['read_only'] else ''}" for m in envoy["mounts"]],
        "depends_on": [a],
    }
doc = {"version": "2.4", "services": services, "networks": {net: {"labels": {"iac.bench": prefix}}}}
# Compose reads YAML, and JSON is YAML: no PyYAML needed.
json.dump(doc, sys.stdout, indent=2, sort_keys=True)
print()
