"""The same-run baseline for artifacts: aiohttp's FileResponse of a file, and a POST written to one."""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from pathlib import Path

from aiohttp import web

FILE = web.AppKey("file", Path)
UPLOADS = web.AppKey("uploads", Path)
CHUNK_BYTES = 1024 * 1024


async def download(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[FILE])


async def upload(request: web.Request) -> web.Response:
    """Writes the body to a new file as it arrives, as a bare upload endpoint would.

    With `?keep=1` the file is kept and synced to disk before the answer, as a store that
    keeps what it accepted must (the benchmark's folder goes when it ends); without, it is
    deleted at once, its pages never written out.
    """
    keep = request.query.get("keep") == "1"
    target = request.app[UPLOADS] / f"{uuid.uuid4().hex}.bin"
    size = 0
    with target.open("wb") as file:
        async for data in request.content.iter_chunked(CHUNK_BYTES):
            file.write(data)
            size += len(data)
        if keep:
            file.flush()
            await asyncio.to_thread(os.fsync, file.fileno())
    if not keep:
        target.unlink()
    return web.json_response({"size": size}, status=201)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--uploads", type=Path, required=True)
    arguments = parser.parse_args()
    app = web.Application(client_max_size=0)
    app[FILE] = arguments.file
    app[UPLOADS] = arguments.uploads
    app.router.add_get("/file", download)
    app.router.add_post("/upload", upload)
    web.run_app(app, host="127.0.0.1", port=arguments.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
