"""greeter's console scripts. `main` is the first one in [project.scripts], so iac runs it.

Every few seconds it asks its peer `hello` for a greeting through the local Envoy's outbound
listener ($IAC_MESH_OUTBOUND, routed by Host header to hello's sidecar over mTLS) and prints it.
"""
import os
import signal
import sys
import time
import urllib.request


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    outbound = os.environ.get("IAC_MESH_OUTBOUND", "http://127.0.0.1:15001")
    peer = os.environ.get("GREETER_PEER", "hello")
    print(f"greeter: asking {peer} via {outbound}", flush=True)
    while True:
        try:
            req = urllib.request.Request(outbound + "/", headers={"Host": peer})
            with urllib.request.urlopen(req, timeout=3) as resp:
                print(f"greeter: {peer} says: {resp.read().decode().strip()}", flush=True)
        except Exception as exc:  # the peer may not be up yet; keep trying
            print(f"greeter: {peer} not reachable yet: {exc}", flush=True)
        time.sleep(5)


def debug():
    print("greeter debug entry (not the default: it is second in [project.scripts])")
