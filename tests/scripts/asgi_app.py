"""An ASGI app for termscope's uvicorn scenario (asyncio; keep-alive, Content-Length).

  /         answers at once
  /slow?s=N prints "start <client port> <pid>", answers N seconds later (asyncio.sleep: the
            event loop keeps serving meanwhile)
"""
import asyncio
import os
from urllib.parse import parse_qs


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        query = parse_qs(scope.get("query_string", b"").decode())
        seconds = float(query.get("s", ["2"])[0])
        client = scope.get("client") or ("?", "?")
        # One write(2) per line, so concurrent workers' lines never interleave.
        os.write(1, f"start {client[1]} {os.getpid()}\n".encode())
        await asyncio.sleep(seconds)
        body = b"slow done\n"
    else:
        body = b"ok\n"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
