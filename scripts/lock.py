"""The dependency lock: exact versions, with hashes, of everything cygate installs.

``pyproject.toml`` keeps ranges: they are the package's contract with its users. What the Makefile,
CI and the Dockerfile install comes from three lock files compiled from it by ``uv pip compile``
for the platform cygate is built, tested and shipped on: CPython 3.11 on x86-64 Linux (glibc
2.28 or newer: the CI machine and the image's base). A universal lock cannot promise that: it
may pick a release whose wheels are all for newer Pythons (atheris did).

- ``requirements/dev.txt``: the runtime dependencies, the ``dev`` extra and the ``build`` group
  (``make install``, ``make test``, ``.ci/run``);
- ``requirements/runtime.txt``: the runtime dependencies only (the image's runtime stage);
- ``requirements/build.txt``: the ``build`` group only (what compiles the wheel in the image).

``runtime.txt`` and ``build.txt`` are compiled with ``dev.txt`` as constraints, so a package has the
same version in every file. Each file records the requirements it was compiled from, so a change to
pyproject.toml that was not followed by ``make lock`` is caught without a network:

    python scripts/lock.py check           # one line and exit 1 when a lock is out of date
    python scripts/lock.py compile         # after editing pyproject.toml: keeps the other pins
    python scripts/lock.py compile --upgrade   # every package to its newest allowed release
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
INPUT_MARK = "# input: "
PLATFORM = "x86_64-manylinux_2_28"
PYTHON = "3.11"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _norm(spec: str) -> str:
    """One spelling per requirement, whatever its spacing or name case in pyproject.toml."""
    req = Requirement(spec)
    req.name = canonicalize_name(req.name)
    return str(req)


def inputs(repo: Path) -> dict[str, list[str]]:
    """The requirements each lock file is compiled from, as pyproject.toml says today."""
    meta = tomllib.loads((repo / "pyproject.toml").read_text())
    project = meta["project"]
    runtime = [_norm(r) for r in project.get("dependencies", [])]
    dev = [_norm(r) for r in project.get("optional-dependencies", {}).get("dev", [])]
    build = [_norm(r) for r in meta.get("dependency-groups", {}).get("build", [])]
    return {
        "dev.txt": sorted({*runtime, *dev, *build}),
        "runtime.txt": sorted(runtime),
        "build.txt": sorted(build),
    }


def recorded(path: Path) -> list[str]:
    return sorted(
        line[len(INPUT_MARK) :].strip()
        for line in path.read_text().splitlines()
        if line.startswith(INPUT_MARK)
    )


def pins(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def problems(repo: Path) -> list[str]:
    """What is wrong with the lock, most important first; empty when it matches pyproject.toml."""
    meta = tomllib.loads((repo / "pyproject.toml").read_text())
    lock_dir = repo / "requirements"
    system = sorted(_norm(r) for r in meta["build-system"]["requires"])
    group = sorted(_norm(r) for r in meta.get("dependency-groups", {}).get("build", []))
    if system != group:
        return [
            "pyproject.toml: [build-system].requires "
            f"{system} differs from [dependency-groups].build {group}; make them the same"
        ]
    found: list[str] = []
    for name, wanted in inputs(repo).items():
        path = lock_dir / name
        if not path.exists():
            found.append(f"requirements/{name} is missing; run `make lock`")
            continue
        have = recorded(path)
        if have != wanted:
            added = sorted(set(wanted) - set(have))
            removed = sorted(set(have) - set(wanted))
            what = "; ".join(
                part
                for part in (
                    f"added {', '.join(added)}" if added else "",
                    f"removed {', '.join(removed)}" if removed else "",
                )
                if part
            )
            found.append(
                f"requirements/{name} is out of date with pyproject.toml ({what}); run `make lock`"
            )
    dev_pins = pins(lock_dir / "dev.txt") if (lock_dir / "dev.txt").exists() else {}
    for name in ("runtime.txt", "build.txt"):
        path = lock_dir / name
        if not path.exists() or not dev_pins:
            continue
        for pkg, version in sorted(pins(path).items()):
            if dev_pins.get(pkg) != version:
                found.append(
                    f"requirements/{name} pins {pkg}=={version} but requirements/dev.txt "
                    f"has {dev_pins.get(pkg, 'none')}; run `make lock`"
                )
                break
    return found


def _compile(name: str, reqs: list[str], upgrade: bool, constraints: Path | None) -> None:
    out = REPO / "requirements" / name
    source = REPO / "requirements" / f".{name}.in"
    source.write_text("".join(r + "\n" for r in reqs))
    cmd = [
        str(Path(sys.executable).parent / "uv"),
        "pip",
        "compile",
        str(source.relative_to(REPO)),
        "--python-platform",
        PLATFORM,
        "--python-version",
        PYTHON,
        "--generate-hashes",
        "--no-annotate",
        "--quiet",
        "--custom-compile-command",
        "make lock",
        "-o",
        str(out.relative_to(REPO)),
    ]
    if upgrade:
        cmd.append("--upgrade")
    if constraints is not None:
        cmd += ["-c", str(constraints.relative_to(REPO))]
    try:
        subprocess.run(cmd, cwd=REPO, check=True)
    finally:
        source.unlink()
    body = [line for line in out.read_text().splitlines() if not line.startswith(INPUT_MARK)]
    header = [INPUT_MARK + r for r in reqs]
    # uv's own header first (two comment lines), then what the file was compiled from.
    out.write_text("\n".join(body[:2] + header + body[2:]) + "\n")


def compile_all(upgrade: bool) -> None:
    (REPO / "requirements").mkdir(exist_ok=True)
    wanted = inputs(REPO)
    _compile("dev.txt", wanted["dev.txt"], upgrade, None)
    for name in ("runtime.txt", "build.txt"):
        _compile(name, wanted[name], False, REPO / "requirements" / "dev.txt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/lock.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="exit 1 with one line when a lock is out of date")
    check.add_argument("--repo", type=Path, default=REPO, help="the checkout to check")
    comp = sub.add_parser("compile", help="compile the lock files with uv")
    comp.add_argument("--upgrade", action="store_true", help="newest allowed releases")
    args = parser.parse_args(argv)
    if args.command == "compile":
        compile_all(args.upgrade)
        return 0
    try:
        found = problems(args.repo)
    except (InvalidRequirement, KeyError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"lock: pyproject.toml cannot be read: {exc}", file=sys.stderr)
        return 1
    if found:
        print(f"lock: {found[0]}", file=sys.stderr)
        return 1
    print("lock: requirements/*.txt match pyproject.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
