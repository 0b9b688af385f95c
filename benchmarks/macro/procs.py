"""Contender processes: start each in its own process group, wait until it answers, read its CPU
time and memory from ``/proc``, and always kill the whole group.

CPU is ``utime + stime`` (plus ``cutime + cstime``, the time of children already reaped) summed
over the server process and all its descendants, e.g. Granian's worker processes. Reading it
just before and just after the measured run and dividing by the requests completed gives the
server's CPU per request, which is steadier than req/s on a shared machine. PostgreSQL's share
is read the same way from the tree of the postmaster that serves the benchmark database (its
backends, and in ``cutime`` the backends that have exited).
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CLK_TCK",
    "HttpResponse",
    "ServerProcess",
    "cpu_seconds_each",
    "free_port",
    "http_get",
    "kill_all",
    "parent_pid",
    "start_gateway",
    "tree_cpu_seconds",
    "tree_pids",
    "tree_rss_mib",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

_live: set[ServerProcess] = set()


# --------------------------------------------------------------------------- /proc readings


@dataclass(frozen=True, slots=True)
class _Stat:
    pid: int
    comm: str
    ppid: int
    ticks: int  # utime + stime + cutime + cstime
    rss_pages: int


def _read_stat(pid: int) -> _Stat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # NOTE: comm is in parentheses and may itself contain spaces or ')': split at the last ')'.
    lpar, rpar = raw.index("("), raw.rindex(")")
    rest = raw[rpar + 2 :].split()
    # rest[0] is field 3 (state); utime..cstime are fields 14..17, rss is field 24.
    return _Stat(
        pid=pid,
        comm=raw[lpar + 1 : rpar],
        ppid=int(rest[1]),
        ticks=int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14]),
        rss_pages=int(rest[21]),
    )


def _all_stats() -> list[_Stat]:
    stats = (_read_stat(int(e.name)) for e in os.scandir("/proc") if e.name.isdigit())
    return [s for s in stats if s is not None]


def _tree(root_pid: int) -> list[_Stat]:
    """The process and all its live descendants."""
    stats = _all_stats()
    children: dict[int, list[_Stat]] = {}
    by_pid = {}
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat)
        by_pid[stat.pid] = stat
    if root_pid not in by_pid:
        return []
    found, todo = [], [by_pid[root_pid]]
    while todo:
        stat = todo.pop()
        found.append(stat)
        todo.extend(children.get(stat.pid, ()))
    return found


def tree_pids(root_pid: int) -> list[int]:
    """The pids of a process and its live descendants (empty if there is no such process)."""
    return [stat.pid for stat in _tree(root_pid)]


def tree_cpu_seconds(root_pid: int) -> float:
    """CPU seconds used so far by a process and its descendants (reaped ones included);
    NaN if there is no such process."""
    tree = _tree(root_pid)
    return sum(stat.ticks for stat in tree) / CLK_TCK if tree else math.nan


def cpu_seconds_each(pids: Iterable[int]) -> dict[int, float]:
    """CPU seconds used so far by each of ``pids`` that is alive (its own and its reaped
    children's), e.g. the PostgreSQL backends serving one database."""
    stats = (_read_stat(pid) for pid in pids)
    return {s.pid: s.ticks / CLK_TCK for s in stats if s is not None}


def tree_rss_mib(root_pid: int) -> float:
    """Resident memory of a process and its live descendants, in MiB (shared pages counted
    once per process, as ``ps`` does)."""
    return sum(stat.rss_pages for stat in _tree(root_pid)) * PAGE_SIZE / 2**20


def parent_pid(pid: int) -> int | None:
    stat = _read_stat(pid)
    return stat.ppid if stat is not None else None


# --------------------------------------------------------------------------- HTTP probes


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    """Every response header, names lower-cased, in the order sent."""


def http_get(
    host: str, port: int, path: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> HttpResponse:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        headers = tuple((k.lower(), v) for k, v in resp.getheaders())
        return HttpResponse(resp.status, resp.getheader("content-type") or "", resp.read(), headers)
    finally:
        conn.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- processes


class ServerProcess:
    """A contender in its own session (so its own process group), output to a log file.

    Use as a context manager; leaving it, normally or by an exception, kills the whole group.
    Every live instance is also killed at interpreter exit.
    """

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _live.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(
        self,
        host: str,
        port: int,
        path: str,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        poll: float = 0.1,
    ) -> None:
        """Poll ``GET path`` every ``poll`` seconds until it answers 200; raise RuntimeError
        (with the log's tail) if the process exits or the time runs out."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"exited with code {self.proc.returncode} before it was ready; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                resp = http_get(host, port, path, headers, timeout=1.0)
            except OSError as exc:
                last = repr(exc)
            else:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}: {resp.body[:200]!r}"
            time.sleep(poll)
        raise RuntimeError(
            f"not ready after {timeout:.0f} s on {path} (last: {last}); "
            f"log tail:\n{self.log_tail()}"
        )

    def kill(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace`` seconds."""
        if self not in _live:
            return
        _live.discard(self)
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        _signal_group(pgid, signal.SIGTERM)
        # NOTE: workers may outlive their leader, so wait for the whole group, not the leader.
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.proc.poll()  # reap the leader, or it counts as alive while a zombie
            if not _group_alive(pgid):
                break
            time.sleep(0.05)
        else:
            _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        self._log.close()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def start_gateway(
    env: Mapping[str, str],
    *,
    workers: int,
    cwd: Path,
    log_path: Path,
    python: str = sys.executable,
    host: str = "127.0.0.1",
    timeout: float = 60.0,
) -> tuple[ServerProcess, int]:
    """``python -m cygate serve`` with ``workers`` Granian workers on a free port of ``host``,
    returned once ``/readyz`` answers 200: the process (a context manager) and the port."""
    port = free_port(host)
    argv = [python, "-m", "cygate", "serve", "--host", host, "--port", str(port),
            "--workers", str(workers)]  # fmt: skip
    server = ServerProcess(argv, env=env, cwd=cwd, log_path=log_path)
    try:
        server.wait_ready(host, port, "/readyz", timeout)
    except BaseException:
        server.kill()
        raise
    return server, port


def kill_all(servers: Iterable[ServerProcess] | None = None) -> None:
    """Kill every live contender (all of them, or those given)."""
    for server in list(servers if servers is not None else _live):
        server.kill()


atexit.register(kill_all)
