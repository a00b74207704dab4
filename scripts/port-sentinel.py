#!/usr/bin/env python3
"""Holds the given loopback ports while the test suite runs and answers every request on
them with 418 and a message naming the port: a test that reaches a default port of the
services (which it did not start) fails loudly, whether or not the README's services run.

    scripts/port-sentinel.py PORT [PORT ...]
"""
import http.server
import sys
import threading


class Sentinel(http.server.BaseHTTPRequestHandler):
    def answer(self):
        body = (
            '{"error":{"type":"test_error","code":"default_port_reached",'
            f'"message":"a test reached default port {self.server.server_port}, which it did not start"}}}}'
        ).encode()
        self.send_response(418)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

    def log_message(self, *args):
        pass


def main():
    servers = [
        http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Sentinel)
        for port in sys.argv[1:]
    ]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    if servers:
        servers[0].serve_forever()


if __name__ == "__main__":
    main()
