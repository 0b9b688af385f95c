#!/usr/bin/env bash
# Find PostgreSQL and Redis for cygate's tests and development; when none answers, install and
# start private, throwaway instances under <repo>/.services.
#
#   scripts/services.sh [up]   find or start both, write .services/env, print one line each
#   scripts/services.sh env    print .services/env (use: eval "$(scripts/services.sh env)")
#   scripts/services.sh down   stop the private instances this script started (never a system one)
#   scripts/services.sh haproxy   print the path of haproxy (installed when missing; the load
#                              balancer test starts its own instance, nothing runs as a service)
#
# `up` also makes sure Prometheus's binaries (prometheus, promtool) are installed: the tests of
# deploy/prometheus/ check the alert rules with promtool and scrape a test gateway with a private
# Prometheus of their own (no Prometheus service is started or used).
#
# Targets (the effective URLs are the same; a private instance listens where the URL points):
#   DATABASE_URL  default postgresql://postgres@127.0.0.1:5432/postgres
#   REDIS_URL     default redis://127.0.0.1:6379/0
# Other knobs: CYGATE_SERVICES_DIR (default <repo>/.services), PG_BINDIR (server binaries),
#   SERVICES_WAIT (seconds to wait for a server to answer, default 60).
#
# An existing server that answers is used as it is: nothing in it is reconfigured (the only write
# is CREATE DATABASE when the database named in the URL is missing). Private instances keep
# nothing worth keeping: PostgreSQL runs with fsync off, Redis saves nothing to disk.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
SERVICES_DIR=${CYGATE_SERVICES_DIR:-$REPO/.services}
DEFAULT_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres
DEFAULT_REDIS_URL=redis://127.0.0.1:6379/0
WAIT=${SERVICES_WAIT:-60}
export DEBIAN_FRONTEND=noninteractive

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------

urldecode() { local s=${1//+/ }; printf '%b' "${s//%/\\x}"; }

# parse_url URL: sets U_SCHEME U_USER U_PASS U_HOST U_PORT U_PATH U_QUERY U_PREFIX
# (U_PREFIX is scheme://[auth@]host[:port], for rebuilding the URL with another path).
parse_url() {
    local url=$1 rest auth=""
    [[ $url == *://* ]] || die "not a URL: $url"
    U_SCHEME=${url%%://*}
    rest=${url#*://}
    U_QUERY="" U_PATH="" U_PORT="" U_USER="" U_PASS=""
    if [[ $rest == *\?* ]]; then U_QUERY=${rest#*\?}; rest=${rest%%\?*}; fi
    if [[ $rest == */* ]]; then U_PATH=${rest#*/}; rest=${rest%%/*}; fi
    U_PREFIX="$U_SCHEME://$rest"
    if [[ $rest == *@* ]]; then auth=${rest%@*}; rest=${rest##*@}; fi
    if [[ -n $auth ]]; then
        U_USER=$(urldecode "${auth%%:*}")
        [[ $auth == *:* ]] && U_PASS=$(urldecode "${auth#*:}")
    fi
    if [[ $rest == \[*\]* ]]; then            # [::1]:5432
        U_HOST=${rest%%]*}; U_HOST=${U_HOST#[}
        rest=${rest#*]}; [[ $rest == :* ]] && U_PORT=${rest#:}
    else
        U_HOST=${rest%%:*}; [[ $rest == *:* ]] && U_PORT=${rest##*:}
    fi
    U_HOST=$(urldecode "$U_HOST")
    U_PATH=$(urldecode "$U_PATH")
}

# The URL as printed: the password masked.
shown() { sed -E 's#^([a-z]+://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

is_local_host() {
    case $1 in 127.*|localhost|::1) return 0 ;; *) return 1 ;; esac
}

# tcp_open HOST PORT: something accepts TCP connections there.
tcp_open() {
    # shellcheck disable=SC2016  # expanded by the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# ---------------------------------------------------------------------------------------------
# privileges and packages
# ---------------------------------------------------------------------------------------------

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif have sudo && sudo -n true 2>/dev/null; then sudo -n -E "$@"
    else die "need root (or password-less sudo) to run: $*"
    fi
}

apt_install_cleanup() {
    [[ -z ${added_policy:-} ]] || as_root rm -f "$policy" || true
    [[ -z ${added_cc:-} ]] || as_root rm -f "$cc_conf" || true
    [[ -z ${added_cc_dir:-} ]] || as_root rmdir "$cc_dir" 2>/dev/null || true
    added_policy="" added_cc="" added_cc_dir=""
}

# apt_install [OPTION...] PKG...: non-interactive; 'apt-get update' only when a package has no install
# candidate or the install fails (stale lists). While installing, no service is started
# (a temporary policy-rc.d) and no default PostgreSQL cluster is created: we only want the
# binaries; a system server is not ours to start.
apt_install() {
    have apt-get || die "apt-get not found; install by hand: $*"
    policy=/usr/sbin/policy-rc.d cc_dir=/etc/postgresql-common/createcluster.d
    cc_conf=$cc_dir/zz-cygate-services.conf added_policy="" added_cc="" added_cc_dir=""
    local pkg need_update="" policy_out
    for pkg in "$@"; do
        [[ $pkg == -* ]] && continue  # an apt-get option (--no-install-recommends)
        policy_out=$(apt-cache policy "$pkg" 2>/dev/null || true)
        [[ $policy_out == *"Candidate: "[!\(]* ]] || need_update=1
    done
    # Undo the two temporary files even when interrupted.
    trap 'apt_install_cleanup' EXIT INT TERM
    if [[ ! -e $policy ]]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added_policy=1
    fi
    if [[ ! -e $cc_conf ]]; then
        [[ -d $cc_dir ]] || added_cc_dir=1
        as_root sh -c "mkdir -p $cc_dir && echo 'create_main_cluster = off' > $cc_conf"
        added_cc=1
    fi
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300
               -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    local rc=0
    {
        if [[ -n $need_update ]]; then as_root "${apt[@]}" update; fi
        as_root "${apt[@]}" install "$@" ||
            { [[ -z $need_update ]] && as_root "${apt[@]}" update && as_root "${apt[@]}" install "$@"; }
    } >&2 || rc=$?
    apt_install_cleanup
    trap - EXIT INT TERM
    [[ $rc -eq 0 ]] || die "apt-get install $* failed"
    hash -r
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------

# Newest /usr/lib/postgresql/<ver>/bin holding $1 (Debian keeps server binaries there).
pg_libexec() {
    local d
    while read -r d; do
        [[ -x $d/$1 ]] && { printf '%s\n' "$d/$1"; return 0; }
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
    return 1
}

# Client tool path (PATH first: Debian's wrappers pick the right version), or nothing.
pg_client() { command -v "$1" 2>/dev/null || pg_libexec "$1" || true; }

# Directory of the server binaries (initdb, pg_ctl, postgres), or nothing.
pg_server_bindir() {
    local p
    if [[ -n ${PG_BINDIR:-} && -x $PG_BINDIR/initdb ]]; then printf '%s\n' "$PG_BINDIR"; return; fi
    if p=$(command -v initdb 2>/dev/null) && p=$(readlink -f "$p") &&
        [[ -x ${p%/*}/pg_ctl && -x ${p%/*}/postgres ]]; then
        printf '%s\n' "${p%/*}"; return
    fi
    if p=$(pg_libexec initdb) && [[ -x ${p%/*}/pg_ctl && -x ${p%/*}/postgres ]]; then
        printf '%s\n' "${p%/*}"
    fi
}

venv_python() {
    local py=${PYTHON:-$REPO/.venv/bin/python}
    [[ -x $py ]] && printf '%s\n' "$py"
}

# pg_probe URL: prints one word: ok | down | starting | nodb | error:<message>
pg_probe() {
    local url=$1 isready psql out rc=0 py
    isready=$(pg_client pg_isready)
    psql=$(pg_client psql)
    if [[ -n $isready ]]; then
        "$isready" -q -t 3 -d "$url" >/dev/null 2>&1 || rc=$?
        case $rc in
            0) ;;
            1) echo starting; return ;;
            2) echo down; return ;;
            *) echo "error:pg_isready cannot use $(shown "$url") (bad URL?)"; return ;;
        esac
    fi
    if [[ -n $psql ]]; then
        rc=0
        out=$(PGCONNECT_TIMEOUT=3 "$psql" -X -A -t -q -c 'select 1' -d "$url" 2>&1) || rc=$?
        if [[ $rc -eq 0 ]]; then echo ok
        elif [[ $out == *"database \""*"\" does not exist"* ]]; then echo nodb
        elif [[ $out == *"starting up"* || $out == *"shutting down"* ]]; then echo starting
        elif [[ $out == *"Connection refused"* || $out == *"No such file or directory"* ||
                $out == *"could not connect"* || $out == *"timeout expired"* ]]; then echo down
        else echo "error:${out//$'\n'/ }"
        fi
        return
    fi
    if py=$(venv_python) && "$py" -c 'import asyncpg' >/dev/null 2>&1; then
        rc=0
        out=$("$py" - "$url" 2>&1 <<'PY'
import asyncio
import sys

import asyncpg


async def main() -> int:
    try:
        conn = await asyncpg.connect(sys.argv[1], timeout=3)
    except (OSError, asyncio.TimeoutError):
        return 2
    except asyncpg.InvalidCatalogNameError:
        return 3
    except asyncpg.CannotConnectNowError:
        return 5
    except Exception as exc:  # auth and the like: the server answers but refuses us
        print(exc)
        return 4
    try:
        await conn.fetchval("select 1")
    finally:
        await conn.close()
    return 0


sys.exit(asyncio.run(main()))
PY
        ) || rc=$?
        case $rc in
            0) echo ok ;; 2) echo down ;; 3) echo nodb ;; 5) echo starting ;;
            *) echo "error:${out//$'\n'/ }" ;;
        esac
        return
    fi
    # No client at all: a bare TCP check. Good enough to say "something answers".
    parse_url "$url"
    if tcp_open "${U_HOST:-127.0.0.1}" "${U_PORT:-5432}"; then echo ok; else echo down; fi
}

# pg_wait URL: wait until the server answers (ok or nodb); prints the last probe result.
pg_wait() {
    local url=$1 deadline=$((SECONDS + WAIT)) st
    while :; do
        st=$(pg_probe "$url")
        case $st in ok|nodb) break ;; esac
        if [[ $st == error:* || $SECONDS -ge $deadline ]]; then break; fi
        sleep 0.5
    done
    printf '%s\n' "$st"
}

# pg_sql URL SQL [VAR=VALUE...]: run SQL (from stdin, so :"var" interpolation works); prints rows.
pg_sql() {
    local url=$1 sql=$2 psql
    shift 2
    psql=$(pg_client psql)
    [[ -n $psql ]] || return 1
    local vars=() kv
    for kv in "$@"; do vars+=(-v "$kv"); done
    printf '%s\n' "$sql" | PGCONNECT_TIMEOUT=5 "$psql" -X -A -t -q -v ON_ERROR_STOP=1 \
        "${vars[@]}" -d "$url"
}

# pg_ensure_database URL: create the database named in the URL when it is missing.
pg_ensure_database() {
    local url=$1 maint
    parse_url "$url"
    local db=${U_PATH:-${U_USER:-postgres}}
    local q=${U_QUERY:+?$U_QUERY}
    for maint in postgres template1; do
        if pg_sql "$U_PREFIX/$maint$q" 'select 1' >/dev/null 2>&1; then
            pg_sql "$U_PREFIX/$maint$q" 'CREATE DATABASE :"db";' "db=$db" >/dev/null ||
                die "could not create database \"$db\""
            log "created database \"$db\""
            return
        fi
    done
    die "database \"$db\" does not exist and no maintenance database is reachable to create it"
}

# pg_check_extensions URL: 0 when pg_trgm and citext are available to CREATE EXTENSION.
pg_check_extensions() {
    local n
    n=$(pg_sql "$1" "select count(*) from pg_available_extensions where name in ('pg_trgm', 'citext')" \
        2>/dev/null) || return 0   # no psql: cannot tell, do not block
    [[ $n == 2 ]]
}

# Where the private cluster lives. Normally .services/pg (+ .services/pg.log, .services/pgsock);
# when the postgres OS user cannot reach that folder, or the socket path would be too long for
# a Unix socket, under /tmp instead (recorded in .services/pg.base so `down` finds it).
pg_paths() {
    local base=""
    [[ -f $SERVICES_DIR/pg.base ]] && base=$(<"$SERVICES_DIR/pg.base")
    if [[ -n $base ]]; then
        PGDATA_DIR=$base/data PG_SOCKDIR=$base/sock PG_LOG=$base/pg.log
    else
        PGDATA_DIR=$SERVICES_DIR/pg PG_SOCKDIR=$SERVICES_DIR/pgsock PG_LOG=$SERVICES_DIR/pg.log
    fi
}

pg_os_user() {
    if [[ $EUID -eq 0 ]]; then echo postgres; else id -un; fi
}

# run_as_pg CMD...: as the postgres OS user when root (initdb and postgres refuse root).
run_as_pg() {
    # 9>&-: a server started from here must not inherit (and so hold) our lock.
    if [[ $EUID -ne 0 ]]; then (cd / && "$@") 9>&-; return; fi
    if have runuser; then (cd / && runuser -u postgres -- "$@") 9>&-
    else (cd / && su -s /bin/sh postgres -c "$(printf '%q ' "$@")") 9>&-
    fi
}

pg_prepare_dirs() {
    local owner
    owner=$(pg_os_user)
    if [[ $EUID -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin postgres
    fi
    pg_paths
    mkdir -p "$PGDATA_DIR" "$PG_SOCKDIR"
    touch "$PG_LOG"
    chown "$owner:" "$PGDATA_DIR" "$PG_SOCKDIR" "$PG_LOG"
    chmod 700 "$PGDATA_DIR"
    if [[ ! -f $SERVICES_DIR/pg.base ]] &&
        { ! run_as_pg test -w "$PGDATA_DIR" -a -w "$PG_SOCKDIR" -a -w "$PG_LOG" ||
          [[ $((${#PG_SOCKDIR} + 20)) -gt 100 ]]; }; then
        local base
        base=/tmp/cygate-services-$(printf '%s' "$SERVICES_DIR" | cksum | cut -d' ' -f1)
        log "the postgres user cannot use $SERVICES_DIR (or its path is too long); using $base"
        rm -rf "${PGDATA_DIR:?}" "$PG_SOCKDIR" "$PG_LOG"
        mkdir -p "$base" && chmod 755 "$base"
        printf '%s\n' "$base" >"$SERVICES_DIR/pg.base"
        pg_paths
        mkdir -p "$PGDATA_DIR" "$PG_SOCKDIR"
        touch "$PG_LOG"
        chown "$owner:" "$base" "$PGDATA_DIR" "$PG_SOCKDIR" "$PG_LOG"
        chmod 700 "$PGDATA_DIR"
    fi
}

# Port of our private cluster when it runs, else nothing.
pg_private_running_port() {
    local bindir=$1
    pg_paths
    [[ -f $PGDATA_DIR/postmaster.pid ]] || return 0
    if run_as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
        sed -n 4p "$PGDATA_DIR/postmaster.pid"
    fi
}

pg_private_up() {
    local url=$1 bindir port host running st
    parse_url "$url"
    host=${U_HOST:-}
    port=${U_PORT:-5432}
    [[ -n $host && $host != /* ]] || die "DATABASE_URL has no TCP host; cannot start a private PostgreSQL for it"
    is_local_host "$host" || die "PostgreSQL at $(shown "$url") does not answer, and $host is not this machine"

    bindir=$(pg_server_bindir)
    if [[ -z $bindir ]]; then
        log "postgres: initdb/pg_ctl not found; installing postgresql"
        apt_install postgresql postgresql-contrib
        bindir=$(pg_server_bindir)
        [[ -n $bindir ]] || die "postgresql installed but initdb/pg_ctl still not found"
        # Should the install have brought up a server at the target after all, use it.
        st=$(pg_probe "$url")
        if [[ $st == ok || $st == nodb ]]; then PG_MODE="using existing"; return; fi
    fi

    pg_paths
    running=$(pg_private_running_port "$bindir")
    if [[ -n $running && $running == "$port" ]]; then
        PG_MODE="private instance already running"
    else
        if [[ -n $running ]]; then
            log "postgres: private instance runs on port $running; restarting it on $port"
            run_as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" stop -m fast -w >/dev/null
        fi
        if tcp_open "$host" "$port"; then
            die "something listens on $host:$port but does not answer as PostgreSQL"
        fi
        pg_prepare_dirs
        local want have_ver
        want=$("$bindir/postgres" -V | awk '{print $3}' | cut -d. -f1)
        if [[ -f $PGDATA_DIR/PG_VERSION ]]; then
            have_ver=$(<"$PGDATA_DIR/PG_VERSION")
            if [[ $have_ver != "$want" ]]; then
                if [[ -x /usr/lib/postgresql/$have_ver/bin/pg_ctl ]]; then
                    bindir=/usr/lib/postgresql/$have_ver/bin
                else
                    die "$PGDATA_DIR was made by PostgreSQL $have_ver but only $want is installed; remove it (scripts/services.sh down && rm -rf $PGDATA_DIR)"
                fi
            fi
        else
            log "postgres: initdb $PGDATA_DIR"
            run_as_pg "$bindir/initdb" -D "$PGDATA_DIR" -U postgres --auth-local=trust \
                --auth-host=trust -E UTF8 --locale=C.UTF-8 >"$SERVICES_DIR/initdb.log" 2>&1 ||
                run_as_pg "$bindir/initdb" -D "$PGDATA_DIR" -U postgres --auth-local=trust \
                    --auth-host=trust -E UTF8 --no-locale >"$SERVICES_DIR/initdb.log" 2>&1 ||
                { cat "$SERVICES_DIR/initdb.log" >&2; die "initdb failed"; }
            # A throwaway test server: durability off, a little more room for connections.
            run_as_pg sh -c "cat >> '$PGDATA_DIR/postgresql.conf'" <<'CONF'

# --- scripts/services.sh: private throwaway instance ---
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
CONF
        fi
        local opts="-c listen_addresses='$host' -p $port -k '$PG_SOCKDIR'"
        if ! run_as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t "$WAIT" \
            -o "$opts" start >/dev/null; then
            tail -n 30 "$PG_LOG" >&2 || true
            die "pg_ctl start failed (log: $PG_LOG)"
        fi
        PG_MODE="started private instance"
    fi

    st=$(pg_wait "$url")
    # A user other than the bootstrap superuser: create it (private cluster only).
    if [[ ${U_USER:-postgres} != postgres && $st == error:* ]]; then
        local admin="postgresql://postgres@[${host}]:$port/postgres"
        [[ $host == *:* ]] || admin="postgresql://postgres@$host:$port/postgres"
        pg_sql "$admin" 'CREATE ROLE :"u" LOGIN SUPERUSER;' "u=$U_USER" >/dev/null ||
            die "could not create role $U_USER"
        log "created role \"$U_USER\""
        st=$(pg_wait "$url")
    fi
    case $st in
        ok|nodb) ;;
        *) tail -n 30 "$PG_LOG" >&2 || true; die "private PostgreSQL does not answer at $(shown "$url"): $st" ;;
    esac
}

pg_up() {
    local url=$1 st
    st=$(pg_probe "$url")
    if [[ $st == starting ]]; then st=$(pg_wait "$url"); fi
    case $st in
        ok|nodb)
            # Our own private cluster answering counts as "already running", not "existing".
            local bindir port
            bindir=$(pg_server_bindir)
            parse_url "$url"
            port=""
            [[ -n $bindir ]] && port=$(pg_private_running_port "$bindir")
            if [[ -n $port && $port == "${U_PORT:-5432}" ]]; then
                PG_MODE="private instance already running"
            else
                PG_MODE="using existing"
            fi
            ;;
        down) pg_private_up "$url" ;;
        *) die "PostgreSQL answers at $(shown "$url") but refuses us: ${st#error:}" ;;
    esac
    st=$(pg_probe "$url")
    if [[ $st == nodb ]]; then pg_ensure_database "$url"; st=$(pg_probe "$url"); fi
    [[ $st == ok ]] || die "PostgreSQL at $(shown "$url") is not usable: $st"
    if ! pg_check_extensions "$url"; then
        if [[ $PG_MODE == "using existing" ]]; then
            log "warning: pg_trgm/citext are not available on the existing server (install its contrib package)"
        else
            log "postgres: pg_trgm/citext missing; installing postgresql-contrib"
            apt_install postgresql-contrib
            pg_check_extensions "$url" || die "pg_trgm/citext still not available (restart: scripts/services.sh down; scripts/services.sh up)"
        fi
    fi
}

pg_down() {
    pg_paths
    if [[ ! -f $PGDATA_DIR/postmaster.pid ]]; then
        echo "postgres: no private instance running"
        return
    fi
    local bindir ver
    ver=$(cat "$PGDATA_DIR/PG_VERSION" 2>/dev/null || true)
    if [[ -n $ver && -x /usr/lib/postgresql/$ver/bin/pg_ctl ]]; then bindir=/usr/lib/postgresql/$ver/bin
    else bindir=$(pg_server_bindir)
    fi
    if [[ -n $bindir ]] && run_as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
        run_as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" stop -m fast -w -t "$WAIT" >/dev/null
        echo "postgres: stopped private instance ($PGDATA_DIR)"
    else
        local pid
        pid=$(head -n 1 "$PGDATA_DIR/postmaster.pid")
        if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
            [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *"$PGDATA_DIR"* ||
               $(readlink -f "/proc/$pid/cwd" 2>/dev/null) == "$(readlink -f "$PGDATA_DIR")" ]]; then
            kill -INT "$pid"
            local i
            for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            echo "postgres: stopped private instance ($PGDATA_DIR)"
        else
            rm -f "$PGDATA_DIR/postmaster.pid"
            echo "postgres: no private instance running (removed a stale pidfile)"
        fi
    fi
}

# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------

# redis_probe URL: prints one word: ok | down | starting | error:<message>
redis_probe() {
    local url=$1 out rc=0
    parse_url "$url"
    if have redis-cli; then
        # Not `redis-cli -u`: redis-cli 7.0 sends AUTH "" <password> for redis://:password@host.
        local args=(-h "${U_HOST:-127.0.0.1}" -p "${U_PORT:-6379}" --no-auth-warning)
        [[ -n $U_USER ]] && args+=(--user "$U_USER")
        [[ -n $U_PASS ]] && args+=(-a "$U_PASS")
        [[ $U_SCHEME == rediss ]] && args+=(--tls)
        out=$(timeout 5 redis-cli "${args[@]}" ping 2>&1) || rc=$?
        out=${out//$'\r'/}
    else
        # shellcheck disable=SC2016  # a RESP PING over /dev/tcp; expanded by the inner bash
        out=$(timeout 5 bash -c '
            exec 3<>"/dev/tcp/$0/$1" || { echo "Could not connect: Connection refused"; exit 1; }
            if [[ -n $2 ]]; then
                if [[ -n $3 ]]; then
                    printf "*3\r\n\$4\r\nAUTH\r\n\$%d\r\n%s\r\n\$%d\r\n%s\r\n" "${#3}" "$3" "${#2}" "$2" >&3
                else
                    printf "*2\r\n\$4\r\nAUTH\r\n\$%d\r\n%s\r\n" "${#2}" "$2" >&3
                fi
                IFS= read -r line <&3; line=${line%$'"'\r'"'}
                [[ $line == +OK ]] || { echo "${line#-}"; exit 0; }
            fi
            printf "*1\r\n\$4\r\nPING\r\n" >&3
            IFS= read -r line <&3; line=${line%$'"'\r'"'}
            echo "${line#[+-]}"' "${U_HOST:-127.0.0.1}" "${U_PORT:-6379}" "$U_PASS" "$U_USER" 2>&1) || rc=$?
    fi
    if [[ $out == PONG ]]; then echo ok
    elif [[ $out == *LOADING* ]]; then echo starting
    elif [[ $out == *"Connection refused"* || $out == *"Could not connect"* || $out == "" ]]; then echo down
    else echo "error:${out//$'\n'/ }"
    fi
}

redis_pid() {
    local pidfile=$SERVICES_DIR/redis.pid pid
    [[ -f $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
        [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *redis-server* ]]; then
        printf '%s\n' "$pid"
    fi
}

redis_stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$SERVICES_DIR/redis.pid" "$SERVICES_DIR/redis.port"
}

redis_private_up() {
    local url=$1 host port pid bind
    parse_url "$url"
    host=${U_HOST:-127.0.0.1}
    port=${U_PORT:-6379}
    [[ $U_SCHEME == redis ]] || die "Redis at $(shown "$url") does not answer; a private instance is plain redis://, not $U_SCHEME://"
    is_local_host "$host" || die "Redis at $(shown "$url") does not answer, and $host is not this machine"
    case $host in localhost) bind=127.0.0.1 ;; *) bind=$host ;; esac

    if ! have redis-server; then
        log "redis: redis-server not found; installing redis-server"
        apt_install redis-server
        have redis-server || die "redis-server installed but not found on PATH"
        if [[ $(redis_probe "$url") == ok ]]; then REDIS_MODE="using existing"; return; fi
    fi

    pid=$(redis_pid)
    if [[ -n $pid && $(cat "$SERVICES_DIR/redis.port" 2>/dev/null) == "$port" ]]; then
        REDIS_MODE="private instance already running"
    else
        if [[ -n $pid ]]; then
            log "redis: private instance runs on another port; restarting it on $port"
            redis_stop_pid "$pid"
        fi
        if tcp_open "$host" "$port"; then
            die "something listens on $host:$port but does not answer as Redis"
        fi
        mkdir -p "$SERVICES_DIR/redis"
        local args=(--daemonize yes --bind "$bind" --port "$port" --save "" --appendonly no
                    --dir "$SERVICES_DIR/redis" --logfile "$SERVICES_DIR/redis.log"
                    --pidfile "$SERVICES_DIR/redis.pid")
        [[ -n $U_PASS ]] && args+=(--requirepass "$U_PASS")
        redis-server "${args[@]}" 9>&- || { tail -n 20 "$SERVICES_DIR/redis.log" >&2 || true; die "redis-server failed to start"; }
        printf '%s\n' "$port" >"$SERVICES_DIR/redis.port"
        REDIS_MODE="started private instance"
    fi

    local deadline=$((SECONDS + WAIT)) st
    while :; do
        st=$(redis_probe "$url")
        [[ $st == ok || $st == error:* || $SECONDS -ge $deadline ]] && break
        sleep 0.1
    done
    if [[ $st != ok ]]; then
        tail -n 20 "$SERVICES_DIR/redis.log" >&2 || true
        die "private Redis does not answer at $(shown "$url"): $st"
    fi
}

redis_up() {
    local url=$1 st deadline=$((SECONDS + WAIT))
    st=$(redis_probe "$url")
    while [[ $st == starting && $SECONDS -lt $deadline ]]; do sleep 0.5; st=$(redis_probe "$url"); done
    case $st in
        ok)
            local pid
            pid=$(redis_pid)
            parse_url "$url"
            if [[ -n $pid && $(cat "$SERVICES_DIR/redis.port" 2>/dev/null) == "${U_PORT:-6379}" ]]; then
                REDIS_MODE="private instance already running"
            else
                REDIS_MODE="using existing"
            fi
            ;;
        down) redis_private_up "$url" ;;
        *) die "Redis answers at $(shown "$url") but refuses us: ${st#error:}" ;;
    esac
}

redis_down() {
    local pid
    pid=$(redis_pid)
    if [[ -n $pid ]]; then
        redis_stop_pid "$pid"
        echo "redis: stopped private instance (pid $pid)"
    else
        rm -f "$SERVICES_DIR/redis.pid" "$SERVICES_DIR/redis.port"
        echo "redis: no private instance running"
    fi
}

# ---------------------------------------------------------------------------------------------
# HAProxy (the binary only: tests start private instances with a configuration of their own)
# ---------------------------------------------------------------------------------------------

haproxy_bin() {
    local p
    for p in "$(command -v haproxy 2>/dev/null || true)" /usr/sbin/haproxy; do
        [[ -n $p && -x $p ]] && { printf '%s\n' "$p"; return 0; }
    done
    return 1
}

cmd_haproxy() {
    local bin
    if ! bin=$(haproxy_bin); then
        lock
        bin=$(haproxy_bin) || { log "installing haproxy"; apt_install haproxy; }
        bin=$(haproxy_bin) || die "haproxy is not on PATH after installing it"
    fi
    printf '%s\n' "$bin"
}

# ---------------------------------------------------------------------------------------------
# Prometheus (binaries only: the tests run their own instance)
# ---------------------------------------------------------------------------------------------

prometheus_up() {
    if have prometheus && have promtool; then
        PROM_MODE="found $(prometheus --version 2>&1 | head -n 1)"
        return
    fi
    log "prometheus: prometheus/promtool not found; installing prometheus"
    apt_install --no-install-recommends prometheus
    have prometheus && have promtool || die "prometheus installed but prometheus/promtool not on PATH"
    PROM_MODE="installed $(prometheus --version 2>&1 | head -n 1)"
}

# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------

lock() {
    mkdir -p "$SERVICES_DIR"
    if have flock; then
        exec 9>"$SERVICES_DIR/.lock"
        flock -w 600 9 || die "another scripts/services.sh holds $SERVICES_DIR/.lock"
    fi
}

# 'text' for a shell to read back (single quotes; a ' inside becomes '\'').
shell_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

cmd_up() {
    local db_url=${DATABASE_URL:-$DEFAULT_DATABASE_URL}
    local redis_url=${REDIS_URL:-$DEFAULT_REDIS_URL}
    lock
    PG_MODE="" REDIS_MODE="" PROM_MODE=""
    pg_up "$db_url"
    redis_up "$redis_url"
    prometheus_up
    {
        echo "# written by scripts/services.sh up; source it: . $SERVICES_DIR/env"
        printf "export DATABASE_URL=%s\n" "$(shell_quote "$db_url")"
        printf "export REDIS_URL=%s\n" "$(shell_quote "$redis_url")"
    } >"$SERVICES_DIR/env.tmp"
    mv "$SERVICES_DIR/env.tmp" "$SERVICES_DIR/env"
    echo "postgres: $PG_MODE at $(shown "$db_url")"
    echo "redis: $REDIS_MODE at $(shown "$redis_url")"
    echo "prometheus: $PROM_MODE"
}

cmd_env() {
    [[ -f $SERVICES_DIR/env ]] || die "no $SERVICES_DIR/env yet; run: scripts/services.sh up"
    cat "$SERVICES_DIR/env"
}

cmd_down() {
    [[ -d $SERVICES_DIR ]] || { echo "postgres: no private instance running"; echo "redis: no private instance running"; return; }
    lock
    pg_down
    redis_down
}

case ${1:-up} in
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    haproxy) cmd_haproxy ;;
    -h|--help|help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" ;;
    *) die "unknown command: $1 (use: up | down | env | haproxy)" ;;
esac
