# syntax=docker/dockerfile:1
#
# cygate: API gateway + commerce backend, with the Cython core compiled.
#
#   docker build -t cygate .
#   docker run --rm -p 8000:8000 -e CYGATE_DATABASE_URL=... -e CYGATE_REDIS_URL=... cygate
#
# Two stages: `builder` compiles the project wheel (Cython extensions included; a failed
# compile, or a wheel that came out pure, fails the build) and wheels for every dependency;
# `runtime` installs only those wheels into a virtualenv: no compiler, no sources, non-root.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*

# The build tools come from the project's lock (requirements/build.txt: Cython, setuptools, wheel,
# each with its hashes), the same versions `make install` puts in a development venv.
COPY requirements/build.txt /tmp/build.txt
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/build.txt

WORKDIR /src
COPY . .

# The project wheel, extensions compiled (setup.py fails the build on a compile error).
# CYGATE_NO_EXTENSIONS is cleared so that no build argument or base image can slip a pure
# wheel through; a platform tag (cp311-cp311-linux_*) proves something was compiled.
RUN env -u CYGATE_NO_EXTENSIONS \
        pip wheel . --no-deps --no-build-isolation --no-cache-dir -w /wheels \
    && ls /wheels/cygate-*-cp3*-linux_*.whl

# Wheels for the dependencies: exactly the lock's runtime set (requirements/runtime.txt), every
# download checked against its hashes.
RUN pip wheel --no-cache-dir --require-hashes --no-deps -w /wheels -r requirements/runtime.txt

# Smoke check: install the wheel as the runtime will and make sure the compiled router is the
# one in use, not its pure-Python twin.
WORKDIR /
RUN python -m venv /tmp/check \
    && /tmp/check/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        --require-hashes --no-deps -r /src/requirements/runtime.txt \
    && /tmp/check/bin/pip install --no-cache-dir --no-index --no-deps /wheels/cygate-*.whl \
    && env -u CYGATE_NO_EXTENSIONS /tmp/check/bin/python -c \
        "import cygate.core.router as r; assert r.Router is r.RouterC, 'compiled router not in use'" \
    && env -u CYGATE_NO_EXTENSIONS /tmp/check/bin/python -c \
        "import cygate.core.jwt as j; assert j.JWTVerifier is j.JWTVerifierC, 'compiled JWT verifier not in use'" \
    && rm -rf /tmp/check

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="cygate" \
      org.opencontainers.image.description="Async API gateway with a compiled core, and the commerce backend behind it" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/cygate \
    PATH=/opt/cygate/bin:$PATH \
    CYGATE_JWT_KEY_DIR=/tmp/cygate-keys

RUN groupadd --system --gid 10001 cygate \
    && useradd --system --uid 10001 --gid cygate --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin cygate

# Only the wheels and the lock, bind-mounted from the builder (they never land in a layer of this
# image): the locked dependencies, hashes checked again, then the project wheel without resolving.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,from=builder,source=/src/requirements,target=/requirements \
    python -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir --no-index --find-links /wheels \
        --require-hashes --no-deps -r /requirements/runtime.txt \
    && pip install --no-cache-dir --no-index --no-deps /wheels/cygate-*.whl

WORKDIR /app
USER 10001:10001

EXPOSE 8000

# slim has no curl: python's urllib (urlopen raises on a non-2xx status or no answer).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["cygate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
