"""The ASGI app of app.py with a slow start-up: its lifespan startup takes STARTUP_SECONDS
(a framework loading its application), and uvicorn starts serving its socket only after."""
import asyncio
import os

from app import app as serve


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.sleep(float(os.environ.get("STARTUP_SECONDS", "5")))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await serve(scope, receive, send)
