"""The same-run baseline: a bare aiohttp server that reads the body and answers 202 with JSON."""

from __future__ import annotations

import argparse
import json
import uuid

from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    await request.read()
    body = json.dumps({"run_id": str(uuid.uuid4()), "status": "queued"})
    return web.Response(status=202, text=body, content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    app = web.Application()
    app.router.add_post("/{tail:.*}", accept)
    web.run_app(app, host="127.0.0.1", port=parser.parse_args().port, print=None, access_log=None)


if __name__ == "__main__":
    main()
