"""A program for `cluster --listen` that serves its own metrics on CLUSTER_METRICS_PORT,
for bench/operations.sh's scrape part: slot 1's metrics endpoint accepts connections and
never answers (a hung worker); every other slot answers a small counter. Standard library
only. It also answers HTTP on descriptor 3, counting requests."""

import os
import socket
import threading
import time

REQUESTS = 0
SLOT = int(os.environ.get("CLUSTER_WORKER_MARK", "0.0.0").split(".")[1])


def serve_metrics(port):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)
    while True:
        connection, _ = server.accept()
        if SLOT == 1:
            # Hung: holds the connection and never answers.
            threading.Thread(target=lambda c=connection: time.sleep(3600), daemon=True).start()
            continue
        with connection:
            connection.recv(4096)
            body = ("# TYPE probe_requests counter\nprobe_requests_total %d\n" % REQUESTS).encode()
            connection.sendall(b"HTTP/1.0 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)


def main():
    global REQUESTS
    port = int(os.environ["CLUSTER_METRICS_PORT"])
    threading.Thread(target=serve_metrics, args=(port,), daemon=True).start()
    listener = socket.socket(fileno=3)
    listener.setblocking(True)
    while True:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            REQUESTS += 1
            connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")


main()
