"""PostgreSQL and Redis over TLS, against servers these tests start with TLS on and certificates
``trustme`` makes: the connection is encrypted and verified, and a CA that did not sign the
server's certificate is an error, never a connection in the clear.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
import redis.exceptions
import trustme
from tests.private_postgres import PrivatePostgres

from cygate.infra.db import close_pool, create_pool
from cygate.infra.redis import HeldConnection, create_redis
from cygate.infra.settings import DatabaseSettings, RedisSettings
from cygate.settings import SettingsError, load_settings

pytestmark = pytest.mark.timeout(120)


class Pki:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        ca = trustme.CA()
        self.ca_file = self._write("ca.pem", ca.cert_pem)
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = self._write("server.pem", server.cert_chain_pems[0])
        self.server_key = self._write("server-key.pem", server.private_key_pem)
        client = ca.issue_cert("cygate-client")
        self.client_cert = self._write("client.pem", client.cert_chain_pems[0])
        self.client_key = self._write("client-key.pem", client.private_key_pem)
        self.other_ca_file = self._write("other-ca.pem", trustme.CA().cert_pem)

    def _write(self, name: str, blob: trustme.Blob) -> str:
        path = self.root / name
        blob.write_to_path(str(path))
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("tls-backends")
    os.chmod(root, 0o755)
    return Pki(root)


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_postgres(pki: Pki) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        for name, source in (("server.crt", pki.server_cert), ("server.key", pki.server_key)):
            target = os.path.join(pg.data, name)
            shutil.copy(source, target)
            os.chmod(target, 0o600)
            if os.geteuid() == 0:
                shutil.chown(target, "postgres", "postgres")
        with open(os.path.join(pg.data, "postgresql.conf"), "a") as fh:
            fh.write("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        pg.start()
        yield pg
    finally:
        pg.close()


async def test_postgres_verify_full_from_the_url(tls_postgres: PrivatePostgres, pki: Pki) -> None:
    url = f"{tls_postgres.url()}?sslmode=verify-full&sslrootcert={pki.ca_file}"
    pool = await create_pool(DatabaseSettings(url=url, pool_min=1, pool_max=2))
    try:
        encrypted = await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert encrypted is True
    finally:
        await close_pool(pool)


async def test_postgres_with_another_ca_is_refused(tls_postgres: PrivatePostgres, pki: Pki) -> None:
    url = f"{tls_postgres.url()}?sslmode=verify-full&sslrootcert={pki.other_ca_file}"
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await create_pool(DatabaseSettings(url=url, pool_min=1, pool_max=2))


def test_serve_stops_on_a_postgres_certificate_it_cannot_verify(
    tls_postgres: PrivatePostgres, pki: Pki
) -> None:
    url = f"{tls_postgres.url()}?sslmode=verify-full&sslrootcert={pki.other_ca_file}"
    proc = subprocess.run(
        [sys.executable, "-m", "cygate", "serve", "--port", str(_free_port())],
        env={"PATH": "/usr/bin:/bin", "CYGATE_ENVIRONMENT": "test", "CYGATE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "PostgreSQL TLS failed" in lines[0], proc.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in lines[0]


# -- Redis -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tls_redis(pki: Pki) -> Iterator[int]:
    """A private redis-server listening only with TLS, asking clients for a certificate."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    folder = tempfile.mkdtemp(prefix="cygate-redis-tls-")
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", pki.server_cert, "--tls-key-file", pki.server_key,
         "--tls-ca-cert-file", pki.ca_file, "--tls-auth-clients", "yes",
         "--save", "", "--appendonly", "no", "--dir", folder, "--protected-mode", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                assert proc.stdout is not None
                output = proc.stdout.read().decode()
                if "TLS" in output and ("not" in output or "support" in output):
                    pytest.skip(f"redis-server is built without TLS: {output.strip()[-200:]}")
                raise RuntimeError(f"redis-server exited: {output}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server with TLS did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)


async def test_redis_over_tls_with_a_client_certificate(tls_redis: int, pki: Pki) -> None:
    settings = RedisSettings(
        url=f"rediss://127.0.0.1:{tls_redis}/0",
        tls_ca_file=pki.ca_file,
        tls_cert_file=pki.client_cert,
        tls_key_file=pki.client_key,
    )
    handle = create_redis(settings)
    try:
        assert await handle.ping()
        await handle.client.set(handle.key("tls"), b"on")
        assert await handle.client.get(handle.key("tls")) == b"on"
        # The cache's held connections are made from the client's settings: TLS too.
        held = HeldConnection(handle.client, 2.0)
        script = "return redis.call('GET', KEYS[1])"
        sha = hashlib.sha1(script.encode()).hexdigest()
        try:
            assert await held.evalsha(sha, script, [handle.key("tls").encode()], []) == b"on"
        finally:
            await held.close()
    finally:
        await handle.close()


async def test_redis_with_another_ca_is_refused(tls_redis: int, pki: Pki) -> None:
    settings = RedisSettings(
        url=f"rediss://127.0.0.1:{tls_redis}/0",
        tls_ca_file=pki.other_ca_file,
        tls_cert_file=pki.client_cert,
        tls_key_file=pki.client_key,
    )
    handle = create_redis(settings)
    try:
        with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await handle.ping()
    finally:
        await handle.close()


async def test_redis_without_a_client_certificate_is_refused(tls_redis: int, pki: Pki) -> None:
    settings = RedisSettings(url=f"rediss://127.0.0.1:{tls_redis}/0", tls_ca_file=pki.ca_file)
    handle = create_redis(settings)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await handle.ping()
    finally:
        await handle.close()


def test_serve_stops_on_a_redis_certificate_it_cannot_verify(tls_redis: int, pki: Pki) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "CYGATE_ENVIRONMENT": "test",
        "CYGATE_REDIS_URL": f"rediss://127.0.0.1:{tls_redis}/0",
        "CYGATE_REDIS_TLS_CA_FILE": pki.other_ca_file,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cygate", "serve", "--port", str(_free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Redis TLS failed" in lines[0], proc.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in lines[0]


def test_redis_tls_settings_need_rediss_and_a_pair(pki: Pki) -> None:
    with pytest.raises(SettingsError, match="rediss://"):
        load_settings({"CYGATE_REDIS_TLS_CA_FILE": pki.ca_file})
    with pytest.raises(SettingsError, match="go together"):
        load_settings(
            {
                "CYGATE_REDIS_URL": "rediss://127.0.0.1:6380/0",
                "CYGATE_REDIS_TLS_CERT_FILE": pki.client_cert,
            }
        )
