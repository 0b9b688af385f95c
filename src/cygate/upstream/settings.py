"""Settings of upstream routing: the route file, its reloading, and who may read it."""

from __future__ import annotations

from typing import Annotated, Literal

from cygate.infra.settings import Section, doc

__all__ = ["RoutesSettings"]


class RoutesSettings(Section, frozen=True, kw_only=True):
    """The route table file (upstream routes) and ``GET /admin/routes``."""

    file: Annotated[
        str,
        doc("Route table file (TOML if it ends in .toml, else JSON); empty: no upstream routes."),
    ] = ""
    reload_interval: Annotated[
        float,
        doc("Seconds between checks of the route file for changes; 0: only SIGHUP reloads.",
             ge=0, le=3600),
    ] = 1.0  # fmt: skip
    admin_access: Annotated[
        Literal["loopback", "any"],
        doc("Who may read GET /admin/routes besides the admin role: loopback peers, or anyone."),
    ] = "loopback"
