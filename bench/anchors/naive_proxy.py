"""Baseline: the reverse proxy a developer writes first with Starlette + httpx (streaming)."""

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.routing import Route

client = httpx.AsyncClient(
    base_url="http://127.0.0.1:9001", limits=httpx.Limits(max_keepalive_connections=64)
)
HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
}


async def proxy(request):
    headers = [(k, v) for k, v in request.headers.raw if k.decode().lower() not in HOP]
    req = client.build_request(
        request.method, request.url.path, headers=headers, content=request.stream()
    )
    resp = await client.send(req, stream=True)
    out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP}
    return StreamingResponse(
        resp.aiter_raw(),
        status_code=resp.status_code,
        headers=out,
        background=BackgroundTask(resp.aclose),
    )


app = Starlette(
    routes=[
        Route(
            "/{path:path}",
            proxy,
            methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"],
        )
    ]
)
