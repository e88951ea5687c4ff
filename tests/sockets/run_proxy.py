"""Run Peel's data plane alone, in its own process, with a table compiled from a YAML document.

    python -m tests.sockets.run_proxy --document FILE.yaml --port 8080 [--settings FILE.toml]
    python -m tests.sockets.run_proxy --document FILE.yaml --fd 5      # an inherited bound socket

`$VARS` in the document are expanded from the environment (the benchmark passes `$ORIGIN_URL`).
No store, no admin API, no watcher: the socket tests measure this process's RSS, and
`/work/shared/bench/compare.py --cmd` benchmarks it. SIGTERM/SIGINT drain and exit.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import uvloop
import yaml

from gateway.core.settings import load_settings
from gateway.dataplane.proxy import ProxyApp
from gateway.edge.listener import make_server, uvicorn_config
from gateway.telemetry.accesslog import AccessLog
from gateway.upstream.pool import UpstreamPool
from routes.compiler import compile_document
from routes.holder import TableHolder
from routes.model import Document


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--document", required=True, help="YAML document with services and routes")
    ap.add_argument("--settings", help="TOML settings file (PEEL_* environment applies too)")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="listen on 127.0.0.1:PORT")
    where.add_argument("--fd", type=int, help="serve on this inherited, bound, listening socket")
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args(argv)

    settings = load_settings(args.settings)
    with open(args.document) as f:
        document = Document.parse(yaml.safe_load(os.path.expandvars(f.read())))
    holder = TableHolder()
    holder.swap(compile_document(document, 1))

    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        sock.listen(2048)
    sock.setblocking(False)

    async def run() -> None:
        access_log = AccessLog(settings.access_log.target)
        pool = UpstreamPool(settings.proxy)
        app = ProxyApp(holder, pool, settings, access_log)
        server = make_server(uvicorn_config(app, settings, listener="public", sock_fd=sock.fileno()),
                             handle_signals=True)
        try:
            await server.serve(sockets=[sock])
        finally:
            await pool.close()
            access_log.close()

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
