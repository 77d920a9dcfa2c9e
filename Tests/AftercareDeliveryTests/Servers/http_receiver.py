#!/usr/bin/env python3
"""A loopback HTTP(S) receiver for aftercare's delivery tests.

Every request is appended to --log as one JSON line, with the Standard Webhooks signature checked
here, independently of aftercare, against --secret. Routes:

  /ok                 204
  /status/NNN         answers NNN (add ?retry_after=S for a Retry-After header; 3xx get a Location)
  /flaky/N            503 for the first N requests carrying a given webhook-id, then 204
  /reset              closes the connection with a TCP reset, answering nothing
  /hang               reads the request and never answers
  /slow/MS            204 after MS milliseconds
  /drip               sends a 200 head, then one body byte a second

Prints "READY <port>" once listening. Stops on SIGTERM.
"""
import argparse
import base64
import hashlib
import hmac
import json
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

args = None
log_lock = threading.Lock()
flaky_counts = {}


def signature_valid(headers, body):
    if not args.secret:
        return None
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    key = base64.b64decode(args.secret.split("_", 1)[1])
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in headers.get("webhook-signature", "").split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def record(self, body, answered):
        headers = {k.lower(): v for k, v in self.headers.items()}
        entry = {
            "path": self.path,
            "method": self.command,
            "headers": headers,
            "body": body.decode("utf-8", "replace"),
            "signature_valid": signature_valid(headers, body),
            "answered": answered,
            "time": time.time(),
        }
        with log_lock, open(args.log, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        query = parse_qs(url.query)
        route = parts[0]
        if route == "reset":
            self.record(body, "reset")
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if route == "hang":
            self.record(body, "hang")
            time.sleep(120)
            return
        if route == "drip":
            self.record(body, "drip")
            self.send_response(200)
            self.send_header("Content-Length", "120")
            self.end_headers()
            for _ in range(120):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(1)
            return
        status = 204
        if route == "status":
            status = int(parts[1])
        elif route == "slow":
            time.sleep(int(parts[1]) / 1000)
        elif route == "flaky":
            key = self.headers.get("webhook-id", "")
            with log_lock:
                flaky_counts[key] = flaky_counts.get(key, 0) + 1
                seen = flaky_counts[key]
            status = 503 if seen <= int(parts[1]) else 204
        self.record(body, status)
        self.send_response(status)
        if "retry_after" in query:
            self.send_header("Retry-After", query["retry_after"][0])
        if 300 <= status < 400:
            self.send_header("Location", "https://elsewhere.example/hook")
        self.send_header("Content-Length", "0")
        self.end_headers()


def main():
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--secret")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    ThreadingHTTPServer.request_queue_size = 256
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
