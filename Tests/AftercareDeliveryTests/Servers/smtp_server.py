#!/usr/bin/env python3
"""A loopback SMTP server (aiosmtpd) for aftercare's delivery tests.

Each accepted message is parsed with Python's own email parser and written to --out as
<n>.json: envelope, every header decoded, the decoded text body, and any parser defects.
Recipients choose the server's answer:

  tempfail@…   451 at RCPT        closing@…   421 at RCPT
  reject@…     550 at RCPT        drop@…      the connection is dropped after the message
  anything else is accepted (250)

With --cert/--key the server offers STARTTLS and requires it. Prints "READY <port>".
"""
import argparse
import asyncio
import email
import email.policy
import json
import os
import socket
import ssl
import threading
import time

from aiosmtpd.controller import Controller

args = None
counter = 0
lock = threading.Lock()


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local.startswith("tempfail"):
            return "451 4.7.1 Greylisted, try again later"
        if local.startswith("closing"):
            return "421 4.3.2 Service shutting down"
        if local.startswith("reject"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        global counter
        if any(r.startswith("drop") for r in envelope.rcpt_tos):
            server.transport.abort()
            return "250 never sent"
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "headers": {name: str(value) for name, value in message.items()},
            "raw_headers": [line for line in envelope.original_content.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace").split("\r\n")],
            "content_type": message.get_content_type(),
            "charset": message.get_content_charset(),
            "text": body.get_content() if body is not None else None,
            "defects": [str(d) for d in message.defects],
            "tls": session.ssl is not None,
            "time": time.time(),
        }
        with lock:
            counter += 1
            number = counter
        with open(os.path.join(args.out, f"{number:04d}.json"), "w", encoding="utf-8") as out:
            json.dump(record, out)
        return "250 2.0.0 Message accepted for delivery"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    options = {}
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        options = {"tls_context": context, "require_starttls": True}
    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, **options)
    controller.start()
    print(f"READY {port}", flush=True)
    try:
        threading.Event().wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
