#!/usr/bin/env python3
"""A throwaway upstream for trying cedargate behind Envoy: answers every request with the
method, path and headers it received, so you can see what cedargate let through and which
identity headers it added. Usage: python3 scripts/echo-upstream.py [PORT] (default 8080)."""
import http.server
import sys


class Echo(http.server.BaseHTTPRequestHandler):
    def answer(self):
        lines = [f"{self.command} {self.path}"] + [f"{k}: {v}" for k, v in self.headers.items()]
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
