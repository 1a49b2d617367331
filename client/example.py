"""The client in a few lines, runnable beside `scripts/run` (run it from the checkout):

    .venv/bin/python client/example.py [FOLDER]

Starts the `vite-vanilla` template (or FOLDER, a project of your own), follows its start,
writes a file, reads the logs and stops it. An app backend does the same with its own
users' ids and the gateway's URL.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys

from preview_client import AsyncPreviewClient, PreviewClient, PreviewFailed, mint_token

# scripts/run records its settings (the gateway's URL, the JWT secret) in .state/run.env.
lines = pathlib.Path(".state/run.env").read_text().splitlines()
run_env = dict(line.split("=", 1) for line in lines if "=" in line)
url = run_env.get("PREVIEW_PUBLIC_URL", "http://127.0.0.1:8080")
token = mint_token(run_env["PREVIEW_JWT_SECRET"], "alice", ttl=600)  # the backend's job

with PreviewClient(url, token) as client:
    if len(sys.argv) > 1:
        preview = client.start_folder("my-app", sys.argv[1])
    else:
        preview = client.start("demo", template="vite-vanilla")  # or git_url=, ref=
    try:
        preview = client.wait_ready(
            preview.id, on_event=lambda e: print(e.type, e.step or "", e.percent, e.message)
        )
    except PreviewFailed as failed:
        sys.exit(f"failed: {failed.reason}: {failed.detail}")
    print("open", preview.open_url)  # single-use, ~60 s: hand it to the iframe at once
    client.write_file(preview.id, "hello.txt", "written through the API\n")
    print("\n".join(client.logs(preview.id, lines=5).lines))
    client.stop(preview.id)


async def show() -> None:
    async with AsyncPreviewClient(url, token) as client:
        print("live previews:", [p.id for p in await client.list()])


asyncio.run(show())
