"""nginx for the benchmarks: installed with apt-get when missing, run in the foreground on a
free port with a configuration in a temporary folder (never the system's, never a daemon).

``python -m benchmarks.nginx json --port P`` serves a fixed small JSON body at every path
(the upstream of the proxy benchmarks); ``python -m benchmarks.nginx proxy --port P
--upstream-port U`` is nginx ``proxy_pass`` with keep-alive to that upstream (the native
floor of proxying). Both ``exec`` nginx, so the process the harness started *is* nginx.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["SMALL_JSON", "ensure_nginx", "nginx_config"]

SMALL_JSON = b'{"id":"7d9f0a52-2a4c-4c1e-9c55-0c6f3f2f1a10","name":"small","price_cents":1999}'

_COMMON = """
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  keepalive_requests 1000000;
  {body}
}}
"""

_JSON = """
  server {{
    listen {host}:{port} reuseport backlog=4096;
    location / {{
      default_type application/json;
      return 200 '{json}';
    }}
  }}
"""

_PROXY = """
  upstream backend {{
    server 127.0.0.1:{upstream_port};
    keepalive 128;
  }}
  server {{
    listen {host}:{port} backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Request-ID $request_id;
      proxy_buffering on;
    }}
  }}
"""


def ensure_nginx() -> str:
    """Path of nginx, installing Debian's ``nginx-light`` first if it is missing."""
    found = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
    if found:
        return str(found)
    print("nginx not found: installing it with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx-light"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
        subprocess.run(install, env=env, check=False)
    found = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
    if not found:
        raise SystemExit("nginx is missing and `apt-get install nginx-light` did not install it")
    return str(found)


def nginx_config(
    root: Path, kind: str, port: int, upstream_port: int = 0, host: str = "127.0.0.1"
) -> Path:
    """Write ``nginx.conf`` for ``kind`` (json | proxy) under ``root``; returns its path."""
    if kind == "json":
        body = _JSON.format(host=host, port=port, json=SMALL_JSON.decode())
    else:
        body = _PROXY.format(host=host, port=port, upstream_port=upstream_port)
    conf = root / "nginx.conf"
    conf.write_text(_COMMON.format(root=root, body=body))
    return conf


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.nginx")
    p.add_argument("kind", choices=("json", "proxy"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, default=0)
    args = p.parse_args()
    nginx = ensure_nginx()
    root = Path(tempfile.mkdtemp(prefix=f"cygate-nginx-{args.kind}-"))
    conf = nginx_config(root, args.kind, args.port, args.upstream_port, args.host)
    os.execv(nginx, [nginx, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")])


if __name__ == "__main__":
    main()
