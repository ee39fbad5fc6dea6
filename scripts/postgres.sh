#!/usr/bin/env bash
# postgres.sh start|stop|status — a throwaway PostgreSQL cluster on loopback
# for the pgxstore tests and benchmarks.
#
#   eval "$(scripts/postgres.sh start)"   # prints: export IDEM_POSTGRES_DSN=...
#   scripts/postgres.sh stop              # stops the cluster and removes it
#
# The cluster lives in $IDEM_SVC_DIR/pg (default: ${TMPDIR:-/tmp}/idem-svc-$UID),
# listens on 127.0.0.1:$IDEM_PG_PORT (default 15432) with its unix socket inside
# that directory, trusts loopback connections and runs with fsync=off: it is
# for tests only and holds nothing worth keeping. Server binaries are looked
# up on PATH and in /usr/lib/postgresql/*/bin; when none is found, Debian's
# postgresql package is installed with apt-get. PostgreSQL refuses to run as
# root, so as root the server runs as the "postgres" user (created if
# missing). Only the export line goes to stdout; logs go to stderr.
# start is idempotent: a running cluster is reused, also one started from
# another service directory on the same port (which stop then leaves alone).
set -euo pipefail

PORT="${IDEM_PG_PORT:-15432}"
DB=idem
PGUSER_NAME=idem

log() { printf 'postgres.sh: %s\n' "$*" >&2; }

svc_dir() {
	local d="${IDEM_SVC_DIR:-${TMPDIR:-/tmp}/idem-svc-$(id -u)}"
	mkdir -p "$d"
	printf '%s\n' "$d"
}

find_bindir() {
	local p
	if p="$(command -v pg_ctl 2>/dev/null)"; then
		p="$(dirname "$(readlink -f "$p")")"
		if [ -x "$p/initdb" ] && [ -x "$p/postgres" ]; then
			printf '%s\n' "$p"
			return 0
		fi
	fi
	for p in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [ -x "$p/pg_ctl" ] && [ -x "$p/initdb" ]; then
			printf '%s\n' "$p"
			return 0
		fi
	done
	return 1
}

ensure_binaries() {
	local b
	if b="$(find_bindir)"; then
		printf '%s\n' "$b"
		return 0
	fi
	log "no PostgreSQL server binaries found; installing Debian's postgresql"
	if [ "$(id -u)" -ne 0 ]; then
		log "not root: cannot apt-get install; install postgresql and retry"
		return 1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
	find_bindir
}

# run_as runs a command as the unprivileged cluster owner when we are root.
run_as() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$RUN_USER" -- "$@"
	else
		"$@"
	fi
}

pick_user() {
	RUN_USER="$(id -un)"
	if [ "$(id -u)" -eq 0 ]; then
		RUN_USER=postgres
		if ! id "$RUN_USER" >/dev/null 2>&1; then
			log "creating system user $RUN_USER"
			useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_USER" >&2
		fi
	fi
}

# cluster_dir prints the cluster directory. As root, when the service
# directory is not reachable by the cluster owner (e.g. under /root), a
# temporary directory is created and remembered in $svc/pg.path.
cluster_dir() {
	local svc d
	svc="$(svc_dir)"
	if [ -f "$svc/pg.path" ]; then
		cat "$svc/pg.path"
		return 0
	fi
	d="$svc/pg"
	if [ "$(id -u)" -eq 0 ] && ! runuser -u "$RUN_USER" -- test -x "$svc" 2>/dev/null; then
		d="$(mktemp -d "${TMPDIR:-/tmp}/idem-pg.XXXXXX")"
		chmod 755 "$d"
		d="$d/pg"
		printf '%s\n' "$d" >"$svc/pg.path"
	fi
	printf '%s\n' "$d"
}

# client runs a client tool (psql, createdb) from the server's bin dir or PATH.
client() {
	local tool="$1"
	shift
	if [ -x "$BIN/$tool" ]; then
		"$BIN/$tool" "$@"
	else
		"$tool" "$@"
	fi
}

dsn() { printf 'postgres://%s@127.0.0.1:%s/%s?sslmode=disable' "$PGUSER_NAME" "$PORT" "$DB"; }

start() {
	local bin dir
	bin="$(ensure_binaries)"
	BIN="$bin"
	pick_user
	local svc
	svc="$(svc_dir)"
	if [ ! -f "$svc/pg.path" ] && [ ! -f "$svc/pg/data/PG_VERSION" ] &&
		client psql -h 127.0.0.1 -p "$PORT" -U "$PGUSER_NAME" -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
		# Another service directory's cluster already serves this port (and
		# trusts us): share it rather than fail to bind. Our stop leaves it.
		log "a server on 127.0.0.1:$PORT accepts $PGUSER_NAME already; reusing it"
		: >"$svc/pg.external"
		dir=""
	else
		dir="$(cluster_dir)"
	fi
	if [ -z "$dir" ]; then
		:
	elif [ -f "$dir/data/PG_VERSION" ] && run_as "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
		log "reusing running cluster in $dir"
	else
		if [ ! -f "$dir/data/PG_VERSION" ]; then
			rm -rf "$dir"
			mkdir -p "$dir/data" "$dir/sock"
			[ "$(id -u)" -eq 0 ] && chown -R "$RUN_USER" "$dir"
			chmod 700 "$dir/data"
			log "initdb into $dir/data ($bin)"
			run_as "$bin/initdb" -D "$dir/data" -U "$PGUSER_NAME" --auth=trust \
				--encoding=UTF8 --locale=C.UTF-8 1>&2 ||
				run_as "$bin/initdb" -D "$dir/data" -U "$PGUSER_NAME" --auth=trust --encoding=UTF8 --no-locale >&2
		fi
		log "starting on 127.0.0.1:$PORT"
		run_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
			-o "-c listen_addresses=127.0.0.1 -p $PORT -k $dir/sock -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" >&2 || {
			log "start failed; server log follows"
			cat "$dir/server.log" >&2 || true
			return 1
		}
	fi
	if ! client psql -h 127.0.0.1 -p "$PORT" -U "$PGUSER_NAME" -d postgres -Atqc \
		"SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
		client createdb -h 127.0.0.1 -p "$PORT" -U "$PGUSER_NAME" "$DB" >&2
	fi
	printf 'export IDEM_POSTGRES_DSN=%s\n' "$(dsn)"
}

stop() {
	local bin dir svc
	svc="$(svc_dir)"
	if ! bin="$(find_bindir)"; then
		log "no PostgreSQL binaries; nothing to stop"
		return 0
	fi
	if [ -f "$svc/pg.external" ]; then
		rm -f "$svc/pg.external"
		log "the cluster on port $PORT belongs to another service directory; left running"
		return 0
	fi
	pick_user
	dir="$(cluster_dir)"
	if [ -f "$dir/data/PG_VERSION" ]; then
		run_as "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop 1>&2 || true
	fi
	rm -rf "$dir"
	if [ -f "$svc/pg.path" ]; then
		rm -rf "$(dirname "$dir")" "$svc/pg.path"
	fi
	log "stopped and removed"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
	echo "usage: $0 start|stop" >&2
	exit 2
	;;
esac
