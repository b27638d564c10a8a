"""A UDP echo server run unmodified under `cluster --listen udp://...`: it takes its socket
as systemd hands it (descriptor 3, LISTEN_FDS), says READY=1 on NOTIFY_SOCKET, and answers
each datagram with the datagram, a space and its pid. SIGTERM ends it between datagrams."""

import os
import signal
import socket
import sys

stopping = False


def stop(_signum, _frame):
    global stopping
    stopping = True
    if waiting:
        raise SystemExit(0)


waiting = False
signal.signal(signal.SIGTERM, stop)

if int(os.environ.get("LISTEN_FDS", "0")) < 1:
    sys.exit("no socket: run me under cluster --listen udp://HOST:PORT")
sock = socket.socket(fileno=3)
notify = os.environ.get("NOTIFY_SOCKET")
if notify:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
        n.sendto(b"READY=1", notify)
suffix = b" %d" % os.getpid()
while not stopping:
    waiting = True
    try:
        data, peer = sock.recvfrom(65535)
    except SystemExit:
        break
    waiting = False
    sock.sendto(data + suffix, peer)
