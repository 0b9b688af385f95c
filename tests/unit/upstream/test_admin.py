"""``GET /admin/routes`` access (loopback by default) and the CLI's route-file check."""

from __future__ import annotations

import json
import pathlib

import pytest
from litestar import Litestar
from litestar.datastructures import State
from litestar.testing import TestClient

from cygate.cli import main
from cygate.settings import load_settings
from cygate.upstream.admin import RoutesAdminController


class _Routes:
    def view(self) -> dict[str, object]:
        return {"routes": [], "upstreams": {}, "last_reload_error": None}


def _app(access: str) -> Litestar:
    settings = load_settings(env={}, routes_admin_access=access)
    return Litestar(
        route_handlers=[RoutesAdminController],
        state=State({"settings": settings, "routes": _Routes()}),
    )


def test_admin_routes_refuses_non_loopback_peers_by_default() -> None:
    with TestClient(_app("loopback")) as client:  # the test client's peer is "testclient"
        assert client.get("/admin/routes").status_code == 403
    with TestClient(_app("any")) as client:
        r = client.get("/admin/routes")
        assert r.status_code == 200 and r.json()["routes"] == []
        assert r.headers["cache-control"] == "no-store"


def test_admin_route_asks_the_edge_for_an_admin() -> None:
    handler = RoutesAdminController.routes
    assert handler.opt["auth"] is True and handler.opt["roles"] == ["admin"]


def test_check_config_names_a_bad_route_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("CYGATE_")]:
        if key != "CYGATE_NO_EXTENSIONS":
            monkeypatch.delenv(key)
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": [{"path": "/x", "upstream": "missing"}]}))
    monkeypatch.setenv("CYGATE_ROUTES_FILE", str(path))
    monkeypatch.chdir(tmp_path)
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert "invalid route file" in err and "routes[0].upstream" in err
    path.write_text(json.dumps({"routes": []}))
    assert main(["check-config"]) == 0
