"""A UDP echo server run unmodified under `cluster --listen udp://...`: it takes its socket
as systemd hands it (descriptor 3, LISTEN_FDS), says READY=1 on NOTIFY_SOCKET, and answers
each datagram with the datagram, a space and its pid. At SIGTERM it answers what it has read
and exits: the socket is shared with the slot's next process, which reads the rest."""

import os
import select
import signal
import socket
import sys

stopping = False


def stop(_signum, _frame):
    # Only a flag: raising here could lose a datagram just read and not yet answered.
    global stopping
    stopping = True


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
    # The socket stays blocking (its flags are shared with the slot's other process); the
    # wait is bounded so a stop is seen, and the read never blocks (another process may
    # have taken the datagram).
    readable, _, _ = select.select([sock], [], [], 0.1)
    if not readable:
        continue
    try:
        data, peer = sock.recvfrom(65535, socket.MSG_DONTWAIT)
    except BlockingIOError:
        continue
    sock.sendto(data + suffix, peer)
