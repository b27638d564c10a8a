"""A program-mode worker that reports what it may do: served on descriptor 3 (LISTEN_FDS),
ready through NOTIFY_SOCKET, and each request answered with a JSON object of its ids, its
supplementary groups, NoNewPrivs, and what happened when it tried to signal the watcher
(its parent) and to connect to the control socket (PROBE_CONTROL). Standard library only."""

import errno
import json
import os
import socket


def attempt(action):
    try:
        action()
        return "ok"
    except OSError as error:
        return errno.errorcode.get(error.errno, str(error.errno))


def connect_control():
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
        control.connect(os.environ["PROBE_CONTROL"])


def facts():
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "no_new_privs": fields.get("NoNewPrivs", "").strip(),
        "kill_watcher": attempt(lambda: os.kill(os.getppid(), 0)),
        "control": attempt(connect_control),
    }


def main():
    listener = socket.socket(fileno=3)
    listener.setblocking(True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.connect(os.environ["NOTIFY_SOCKET"])
        notify.send(b"READY=1")
    while True:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            body = json.dumps(facts()).encode()
            head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            connection.sendall(head + body)


main()
