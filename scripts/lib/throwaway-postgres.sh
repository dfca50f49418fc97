# Sourced by the demo and benchmark scripts: a throwaway PostgreSQL cluster in a temp folder.
#   pg_start DIR      initdb + start on a free port, socket in DIR; exports PGHOST, PGPORT, PGUSER
#   pg_stop DIR       stop it (also run from an EXIT trap by the callers)
# As root, the server runs as the `postgres` user, as PostgreSQL requires.

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [[ -n "$bin" ]] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql; run scripts/bootstrap.sh" >&2; return 1; }
    echo "$bin"
}

pg_as_owner() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_start() {
    local dir=$1 bin port
    bin=$(pg_bin) || return 1
    port=$(pg_free_port)
    mkdir -p "$dir"
    if [[ $(id -u) -eq 0 ]]; then chown postgres: "$dir"; fi
    pg_as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; return 1; }
    pg_as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $port -k $dir -c listen_addresses='' -c fsync=off" start >/dev/null ||
        { cat "$dir/server.log" >&2; return 1; }
    export PGHOST=$dir PGPORT=$port PGUSER=postgres
}

pg_stop() {
    local dir=$1 bin
    bin=$(pg_bin) || return 0
    [[ -f "$dir/data/postmaster.pid" ]] && pg_as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1
    return 0
}
