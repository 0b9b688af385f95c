"""The gateway terminates TLS (Granian's TLS, from the tls_* settings): TLS 1.3 only by default,
the test's CA verifies it, other CAs and other names are refused by the client, and bad TLS
settings stop ``cygate serve`` / ``check-config`` with one line and status 2.

The certificates are made here by ``trustme``: a throwaway CA and a certificate for
``127.0.0.1`` and ``gateway.test``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import trustme
from tests.acceptance.conftest import Gateway, free_port, stop_gateway

pytestmark = pytest.mark.timeout(120)

OPENSSL = shutil.which("openssl")


class TlsFiles:
    def __init__(self, root: pathlib.Path) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "gateway.test")
        self.ca_file = root / "ca.pem"
        self.cert_file = root / "cert.pem"
        self.key_file = root / "key.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        for blob in cert.cert_chain_pems[1:]:
            blob.write_to_path(str(self.cert_file), append=True)
        cert.private_key_pem.write_to_path(str(self.key_file))

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_gateway(gateway_env: dict[str, str], tls_files: TlsFiles) -> Iterator[str]:
    """A gateway (one worker) serving https on 127.0.0.1 with the test's certificate."""
    yield from _serve_tls(gateway_env, tls_files, {})


def _serve_tls(
    gateway_env: dict[str, str],
    tls_files: TlsFiles,
    extra: dict[str, str],
    output: list[str] | None = None,
) -> Iterator[str]:
    """Serve; at the end, the server's output goes to ``output`` (when given)."""
    port = free_port()
    env = {
        **gateway_env,
        "CYGATE_TLS_CERT_FILE": str(tls_files.cert_file),
        "CYGATE_TLS_KEY_FILE": str(tls_files.key_file),
        **extra,
    }
    printed_to = tempfile.TemporaryFile()  # noqa: SIM115  # (closed by stop_gateway)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cygate", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=env, stdout=printed_to, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    gw = Gateway(url, proc, env, printed_to)
    ctx = tls_files.client_context()
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{stop_gateway(gw)}")
        try:
            if httpx.get(url + "/readyz", verify=ctx, timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway not ready over TLS in 30 s:\n{stop_gateway(gw)}")
        time.sleep(0.1)
    try:
        yield url
    finally:
        printed = stop_gateway(gw)
        if output is not None:
            output.append(printed)
        assert "Traceback" not in printed, printed


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _s_client(url: str, tls_files: TlsFiles, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{_port(url)}", *flags,
         "-CAfile", str(tls_files.ca_file), "-verify_return_error", "-servername", "gateway.test"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
    )  # fmt: skip


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
@pytest.mark.parametrize(("flag", "accepted"), [("-tls1_3", True), ("-tls1_2", False)])
def test_tls13_only_by_default(
    tls_gateway: str, tls_files: TlsFiles, flag: str, accepted: bool
) -> None:
    proc = _s_client(tls_gateway, tls_files, flag, "-alpn", "h2,http/1.1")
    if accepted:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "TLSv1.3" in proc.stdout
        assert "Verify return code: 0 (ok)" in proc.stdout
        assert "ALPN protocol: http/1.1" in proc.stdout  # HTTP/1.1 only by default
    else:
        assert proc.returncode != 0, proc.stdout
        assert "Cipher is (NONE)" in proc.stdout or "alert" in proc.stderr.lower()


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
def test_tls12_and_http2_when_configured(gateway_env: dict[str, str], tls_files: TlsFiles) -> None:
    extra = {"CYGATE_TLS_MIN_VERSION": "1.2", "CYGATE_TLS_HTTP2": "true"}
    served = _serve_tls(gateway_env, tls_files, extra)
    url = next(served)
    try:
        proc = _s_client(url, tls_files, "-tls1_2", "-alpn", "h2,http/1.1")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Protocol  : TLSv1.2" in proc.stdout
        assert "ALPN protocol: h2" in proc.stdout
        with httpx.Client(base_url=url, verify=tls_files.client_context()) as client:
            assert client.get("/readyz").status_code == 200
    finally:
        served.close()


def test_https_request_with_the_test_ca(tls_gateway: str, tls_files: TlsFiles) -> None:
    with httpx.Client(base_url=tls_gateway, verify=tls_files.client_context()) as client:
        r = client.get("/readyz")
        assert r.status_code == 200
        r = client.get("/api/v1/products?limit=1")
        assert r.status_code == 200
        assert r.http_version == "HTTP/1.1"


def test_another_ca_is_refused_by_the_client(tls_gateway: str) -> None:
    other = trustme.CA()
    ctx = ssl.create_default_context()
    other.configure_trust(ctx)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls_gateway + "/readyz", verify=ctx)


def test_the_system_store_refuses_the_private_ca(tls_gateway: str) -> None:
    # The test CA is self-signed and in no system store: a default client refuses it.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls_gateway + "/readyz")


def test_a_name_the_certificate_lacks_is_refused(tls_gateway: str, tls_files: TlsFiles) -> None:
    ctx = tls_files.client_context()
    for name, ok in (("gateway.test", True), ("other.test", False)):
        with socket.create_connection(("127.0.0.1", _port(tls_gateway)), timeout=5) as sock:
            if ok:
                with ctx.wrap_socket(sock, server_hostname=name) as tls:
                    assert tls.version() == "TLSv1.3"
            else:
                with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
                    ctx.wrap_socket(sock, server_hostname=name)


def _run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cygate", command],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_bad_tls_settings_are_one_line_and_status_2(
    command: str, tls_files: TlsFiles, tmp_path: pathlib.Path
) -> None:
    cert, key = str(tls_files.cert_file), str(tls_files.key_file)
    other_key = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("x.test").private_key_pem.write_to_path(str(other_key))
    cases = [
        ({"CYGATE_TLS_CERT_FILE": cert, "CYGATE_TLS_KEY_FILE": str(tmp_path / "nope.pem")},
         "tls_key_file: no file at"),
        ({"CYGATE_TLS_CERT_FILE": cert}, "tls_cert_file and tls_key_file go together"),
        ({"CYGATE_TLS_KEY_FILE": key}, "tls_cert_file and tls_key_file go together"),
        ({"CYGATE_TLS_HTTP2": "true"}, "tls_http2 needs tls_cert_file"),
        ({"CYGATE_TLS_CERT_FILE": cert, "CYGATE_TLS_KEY_FILE": key,
          "CYGATE_TLS_MIN_VERSION": "1.1"}, "tls_min_version"),
        ({"CYGATE_TLS_CERT_FILE": cert, "CYGATE_TLS_KEY_FILE": str(other_key)},
         "cannot load"),
    ]  # fmt: skip
    for env, expected in cases:
        proc = _run(command, env)
        assert proc.returncode == 2, (env, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (env, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_check_config_accepts_a_good_pair(tls_files: TlsFiles) -> None:
    env = {
        "CYGATE_TLS_CERT_FILE": str(tls_files.cert_file),
        "CYGATE_TLS_KEY_FILE": str(tls_files.key_file),
        "CYGATE_TLS_MIN_VERSION": "1.2",
    }
    proc = _run("check-config", env)
    assert proc.returncode == 0, proc.stderr
    assert '"tls_min_version": "1.2"' in proc.stdout


def _served_serial(url: str, ctx: ssl.SSLContext) -> int:
    """The serial number of the certificate a new connection is served."""
    with (
        socket.create_connection(("127.0.0.1", _port(url)), timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname="gateway.test") as tls,
    ):
        peer = tls.getpeercert()
    assert peer is not None
    return int(str(peer["serialNumber"]), 16)


def _serial_of(pem: bytes) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem).serial_number


def _replace(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_a_changed_certificate_is_served_without_a_restart(
    gateway_env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    files = TlsFiles(tmp_path)
    ctx = files.client_context()
    serial_a = _serial_of(files.cert_file.read_bytes())
    renewed = files.ca.issue_cert("127.0.0.1", "gateway.test")
    serial_b = _serial_of(renewed.cert_chain_pems[0].bytes())
    assert serial_a != serial_b
    output: list[str] = []
    extra = {"CYGATE_TLS_RELOAD_INTERVAL": "0.5", "CYGATE_LOG_LEVEL": "info"}
    served = _serve_tls(gateway_env, files, extra, output)
    url = next(served)
    failures: list[str] = []
    done = [0]
    retried: list[str] = []
    stop = threading.Event()

    def get() -> None:
        r = httpx.get(url + "/readyz", verify=ctx, timeout=10)
        if r.status_code != 200:
            failures.append(f"status {r.status_code}")

    def requests() -> None:  # each on a new connection, through the swap
        while not stop.is_set():
            try:
                get()
            except (httpx.RemoteProtocolError, httpx.ConnectError) as exc:
                # A connection the old worker accepted as it stopped, closed in the handshake or
                # before its request was read (no response started): a client retries such a
                # request once (RFC 9112, 9.3.1). At most a few in a swap.
                retried.append(repr(exc))
                try:
                    get()
                except httpx.HTTPError as again:
                    failures.append(repr(again))
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            done[0] += 1

    def serves(serial: int, times: int) -> bool:
        return all(_served_serial(url, ctx) == serial for _ in range(times))

    loop = threading.Thread(target=requests)
    try:
        assert _served_serial(url, ctx) == serial_a
        loop.start()
        _replace(files.key_file, renewed.private_key_pem.bytes())
        _replace(files.cert_file, b"".join(blob.bytes() for blob in renewed.cert_chain_pems))
        deadline = time.monotonic() + 10
        while _served_serial(url, ctx) != serial_b:
            assert time.monotonic() < deadline, "certificate B not served within 10 s"
            time.sleep(0.1)
        # The new worker accepts at once; the old one stops after Granian's respawn interval
        # (3.5 s), then every new connection gets B.
        deadline = time.monotonic() + 10
        while not serves(serial_b, 10):
            assert time.monotonic() < deadline, "certificate A still served after 10 s"
            time.sleep(0.2)
        # A broken key: logged, ignored, B keeps serving.
        _replace(files.key_file, b"-----BEGIN PRIVATE KEY-----\nbroken\n")
        time.sleep(1.5)
        assert serves(serial_b, 5)
        stop.set()
        loop.join(15)
        assert failures == [], failures
        assert len(retried) <= 3, retried
        assert done[0] > 10
    finally:
        stop.set()
        served.close()
    printed = output[0]
    assert printed.count("TLS certificate changed: respawning") == 1, printed
    assert printed.count("Stopped old worker-1") == 1, printed  # Granian's graceful respawn
    ignored = [line for line in printed.splitlines() if "TLS certificate change ignored" in line]
    assert len(ignored) == 1, printed
