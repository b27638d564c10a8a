"""The ASGI app of app.py that counts its requests with prometheus_client's default
registry, served for the cluster on the port it gives (the one line an application adds).
At shutdown, after its last request, it stays up 100 ms more so the watcher's reads while it
drains (every 25 ms) see every request it answered."""
import asyncio
import os

from prometheus_client import Counter, start_http_server

from app import app as serve

REQUESTS = Counter("app_requests", "Requests answered")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                start_http_server(int(os.environ["CLUSTER_METRICS_PORT"]), addr="127.0.0.1")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.sleep(0.1)
                await send({"type": "lifespan.shutdown.complete"})
                return
    REQUESTS.inc()
    await serve(scope, receive, send)
