"""An ASGI app that counts its requests with prometheus_client's default registry, served
for the cluster on the port it gives (the one line an application adds)."""
import os

from prometheus_client import Counter, start_http_server

REQUESTS = Counter("app_requests", "Requests answered")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                start_http_server(int(os.environ["CLUSTER_METRICS_PORT"]), addr="127.0.0.1")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    REQUESTS.inc()
    body = f"pid {os.getpid()}".encode()
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
