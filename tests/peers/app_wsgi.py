"""The WSGI app the gunicorn tests run: answers every request with the worker's pid."""
import os


def app(environ, start_response):
    body = f"pid {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
