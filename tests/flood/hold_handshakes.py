#!/usr/bin/env python3
"""Holds connections open to a node's cluster port without ever starting a
handshake, from several source addresses, and opens a new one at once for
every one the node closes. Prints `held N` every half second: the
connections the node has kept open for a second or more. Used by
tests/handshake_flood.rs.

usage: hold_handshakes.py HOST PORT PER_SOURCE SOURCE...
"""
import selectors
import socket
import sys
import time

host, port, per_source = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sources = sys.argv[4:]
sel = selectors.DefaultSelector()
opened = 0


def open_one(source):
    global opened
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.setblocking(False)
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    except OSError:
        s.close()
        return
    sel.register(s, selectors.EVENT_READ, (source, time.monotonic()))
    opened += 1


for source in sources:
    for _ in range(per_source):
        open_one(source)
# Every half second: how many connections the node has kept for a second
# or more (it closes those it refuses at once).
last_report = 0.0
while True:
    now = time.monotonic()
    if now - last_report >= 0.5:
        last_report = now
        held = sum(1 for key in sel.get_map().values() if now - key.data[1] >= 1.0)
        print(f"held {held}", flush=True)
    for key, _ in sel.select(timeout=0.5):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if not data:
            # Closed by the node: take the place again.
            sel.unregister(s)
            s.close()
            open_one(key.data[0])
