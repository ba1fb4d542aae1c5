"""hello: the smallest service iac deploys.

Prints a greeting, then serves HTTP on $PORT until stopped. iac resolves its entry by rule 1
(a root main.py) and runs `python /app/main.py` under iac-agent.
"""
import http.server
import os
import signal
import sys

PORT = int(os.environ.get("PORT", "8080"))
NAME = os.environ.get("IAC_SERVICE", "hello")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {NAME}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(f"{NAME}: {self.address_string()} {fmt % args}", flush=True)


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"hello from {NAME}: listening on :{PORT}", flush=True)
    http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()


if __name__ == "__main__":
    main()
