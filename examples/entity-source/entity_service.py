#!/usr/bin/env python3
"""An example entity source for cedargate (README, "Entity data from the application").

cedargate asks `POST /entities` with {"uids": [{"type": "Order", "id": "2001"}, ...]} and this
service answers with the Cedar entities it has among them (the entities.json format); a uid it
does not answer for does not exist. Here the "application data" is a JSON file of entities
(orders.json beside this script: who owns which order); a real application would read its own
database, answering only for the uids asked.

Usage: python3 examples/entity-source/entity_service.py [--port PORT] [--data FILE] [--token TOKEN]
  --port 0 picks a free port; the first line printed is "listening on 127.0.0.1:PORT".
  --token: require `Authorization: Bearer TOKEN` (cedargate's entity_source.bearer_token_file).
Only standard-library Python; listens on 127.0.0.1 only."""
import argparse
import http.server
import json
import os
import sys


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--data", default=os.path.join(here, "orders.json"))
    parser.add_argument("--token", default=None)
    args = parser.parse_args()
    with open(args.data) as f:
        entities = {(e["uid"]["type"], e["uid"]["id"]): e for e in json.load(f)}

    class Source(http.server.BaseHTTPRequestHandler):
        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            if self.path != "/entities":
                return self.answer(404, {"error": "not found"})
            if args.token and self.headers.get("authorization") != f"Bearer {args.token}":
                return self.answer(401, {"error": "unauthorized"})
            length = int(self.headers.get("content-length", "0"))
            if length > 65536:
                return self.answer(413, {"error": "too large"})
            try:
                asked = json.loads(self.rfile.read(length))["uids"]
                keys = [(uid["type"], uid["id"]) for uid in asked]
            except (ValueError, KeyError, TypeError):
                return self.answer(400, {"error": "expected {\"uids\": [{\"type\", \"id\"}]}"})
            self.answer(200, [entities[k] for k in keys if k in entities])

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Source)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
