"""``cygate-proxy``: the gateway with a route file that sends ``/json`` to the upstream.

Writes the route file into the run's work folder, then ``exec``s ``python -m cygate serve``
(one Granian worker), so the harness measures the gateway's own process tree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    args = p.parse_args()
    routes = {
        "upstreams": {
            "bench": {
                "targets": [f"http://127.0.0.1:{args.upstream_port}"],
                "bulkhead": {"max_concurrent": 1024, "max_queue": 1024},
            }
        },
        "routes": [{"path": "/json", "upstream": "bench", "methods": ["GET"]}],
    }
    path = args.workdir / f"routes-{args.port}.json"
    path.write_text(json.dumps(routes))
    os.environ["CYGATE_ROUTES_FILE"] = str(path)
    argv = [sys.executable, "-m", "cygate", "serve", "--host", args.host,
            "--port", str(args.port), "--workers", "1"]  # fmt: skip
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    main()
