"""Settings of the shared resources (PostgreSQL, Redis, metrics) and the constrained types every
feature's settings section builds on.

Each section is a frozen msgspec struct; :mod:`cygate.settings` composes the sections and maps
the flat ``CYGATE_<NAME>`` names onto them (``CYGATE_DB_POOL_MAX`` is ``database.pool_max``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "DatabaseSettings",
    "LogSettings",
    "MetricsSettings",
    "NonNegative",
    "Port",
    "Positive",
    "RedisSettings",
    "Seconds",
    "Section",
    "Window",
    "doc",
]

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]
Window = Annotated[float, msgspec.Meta(ge=0, le=86400)]


def doc(text: str, **constraints: Any) -> msgspec.Meta:
    """A field's description (shown by the docs) with its constraints."""
    return msgspec.Meta(description=text, **constraints)


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every settings section: immutable, strict about unknown names."""


class DatabaseSettings(Section, frozen=True, kw_only=True):
    """PostgreSQL: the DSN and the pool of each worker."""

    url: Annotated[
        str,
        doc("PostgreSQL DSN.", pattern=r"^postgres(ql)?://"),
    ] = "postgresql://postgres@127.0.0.1:5432/cygate"
    pool_min: Annotated[NonNegative, doc("Connections kept open per worker.")] = 2
    pool_max: Annotated[Positive, doc("Connection ceiling per worker.", le=1000)] = 16
    command_timeout: Annotated[Seconds, doc("Per-statement timeout, seconds.")] = 5.0
    acquire_timeout: Annotated[Seconds, doc("Wait for a pooled connection, seconds.")] = 2.0
    replica_urls: Annotated[
        list[Annotated[str, msgspec.Meta(pattern=r"^postgres(ql)?://")]],
        doc(
            "DSNs of streaming read replicas (JSON list): catalog and search reads "
            "go there while they keep up (docs/scaling.md); empty: the primary serves all."
        ),
    ] = msgspec.field(default_factory=list)
    replica_max_lag: Annotated[
        Seconds, doc("Replay lag past which a replica is skipped, seconds.")
    ] = 1.0
    replica_check_interval: Annotated[
        Seconds, doc("How often each replica's health and lag are checked, seconds.")
    ] = 0.5

    def __post_init__(self) -> None:
        if self.pool_min > self.pool_max:
            raise msgspec.ValidationError(
                "db_pool_min must not exceed db_pool_max - at `$.database.pool_min`"
            )


class RedisSettings(Section, frozen=True, kw_only=True):
    """Redis: the URL, the key prefix, the socket timeout, and whether it is a Redis Cluster."""

    url: Annotated[str, doc("Redis URL.", pattern=r"^(redis|rediss|unix)://")] = (
        "redis://127.0.0.1:6379/0"
    )
    prefix: Annotated[
        str, doc("Prefix of every Redis key cygate writes.", min_length=1, max_length=64)
    ] = "cygate:"
    timeout: Annotated[Seconds, doc("Socket timeout for Redis calls, seconds.")] = 0.5
    tls_ca_file: Annotated[
        str,
        doc(
            "With a rediss:// URL: PEM file of the CAs that may sign the server's certificate "
            "(empty: the system's CAs). The certificate and host name are always verified."
        ),
    ] = ""
    tls_cert_file: Annotated[
        str, doc("With a rediss:// URL: client certificate (PEM) for servers that ask one.")
    ] = ""
    tls_key_file: Annotated[str, doc("Private key (PEM) of redis_tls_cert_file.")] = ""
    cluster: Annotated[
        bool,
        doc(
            "Redis Cluster: redis_url names one node or several, comma-separated "
            "(redis://h1:7000,h2:7001); the others are learned from the cluster."
        ),
    ] = False

    def __post_init__(self) -> None:
        if self.cluster and self.url.startswith("unix://"):
            raise msgspec.ValidationError(
                "redis_cluster needs a redis:// or rediss:// redis_url - at `$.redis.url`"
            )
        if not self.cluster and "," in self.url.split("://", 1)[-1].split("/", 1)[0]:
            raise msgspec.ValidationError(
                "several nodes in redis_url need redis_cluster=true - at `$.redis.url`"
            )
        tls = self.tls_ca_file or self.tls_cert_file or self.tls_key_file
        if tls and not self.url.startswith("rediss://"):
            raise msgspec.ValidationError(
                "redis_tls_* settings need a rediss:// redis_url - at `$.redis.url`"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise msgspec.ValidationError(
                "redis_tls_cert_file and redis_tls_key_file go together - at `$.redis.tls_key_file`"
            )


class MetricsSettings(Section, frozen=True, kw_only=True):
    """Who may scrape ``/metrics`` and where workers share their snapshots."""

    access: Annotated[
        Literal["loopback", "any", "token"],
        doc("Who may scrape /metrics: loopback peers, anyone, or a bearer token."),
    ] = "loopback"
    token: Annotated[str, doc("Bearer token for /metrics when access is token.")] = ""
    dir: Annotated[
        str,
        doc("Folder where workers share metric snapshots; empty: a per-server temp folder."),
    ] = ""

    def __post_init__(self) -> None:
        if self.access == "token" and not self.token:
            raise msgspec.ValidationError(
                "metrics_access is 'token' but no metrics_token is set - at `$.metrics.token`"
            )


class LogSettings(Section, frozen=True, kw_only=True):
    """Log lines and the access log (docs/observability.md)."""

    format: Annotated[
        Literal["auto", "json", "text"],
        doc(
            "Log lines: json (one object per line) or text; auto: json in production, text "
            "in development and test."
        ),
    ] = "auto"
    access_sample: Annotated[
        float,
        doc(
            "Share of requests written to the access log, 0 to 1 (0: none, and no cost on "
            "the fused hit path; 1: every request).",
            ge=0.0,
            le=1.0,
        ),
    ] = 1.0
    access_queue: Annotated[
        int,
        doc(
            "Access-log lines a worker holds before they are written; when full, new lines "
            "are dropped and counted (cygate_access_log_dropped_total), never waited for.",
            ge=1,
            le=1_000_000,
        ),
    ] = 10_000
