#!/usr/bin/env bash
# nats.sh start|stop|status — a throwaway nats-server with JetStream on
# loopback for the natsdedup tests and benchmarks.
#
#   eval "$(scripts/nats.sh start)"   # prints: export IDEM_NATS_URL=nats://127.0.0.1:14222
#   scripts/nats.sh stop              # stops the server and removes its data
#
# The server listens on 127.0.0.1:$IDEM_NATS_PORT (default 14222) and keeps its
# JetStream data in $IDEM_SVC_DIR/nats (default dir: ${TMPDIR:-/tmp}/idem-svc-$UID).
# When nats-server is not on PATH, Debian's nats-server package is installed
# with apt-get (after one apt-get update). Only the export line goes to
# stdout; logs go to stderr. start is idempotent: a running server is reused
# (also one started by another run on the same port, which stop then leaves
# running).
set -euo pipefail

PORT="${IDEM_NATS_PORT:-14222}"

log() { printf 'nats.sh: %s\n' "$*" >&2; }

svc_dir() {
	local d="${IDEM_SVC_DIR:-${TMPDIR:-/tmp}/idem-svc-$(id -u)}"
	mkdir -p "$d"
	printf '%s\n' "$d"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

ensure_binary() {
	if command -v nats-server >/dev/null 2>&1; then
		return 0
	fi
	log "nats-server not found; installing Debian's nats-server"
	if [ "$(id -u)" -ne 0 ]; then
		log "not root: cannot apt-get install; install nats-server and retry"
		return 1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >&2
	command -v nats-server >/dev/null 2>&1
}

start() {
	local dir pidfile
	dir="$(svc_dir)"
	pidfile="$dir/nats.pid"
	if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && port_open; then
		log "reusing nats-server pid $(cat "$pidfile") on port $PORT"
	else
		if port_open; then
			# Another run's server (a parallel test session): reuse it, and
			# leave stopping it to whoever started it.
			log "reusing the server already listening on 127.0.0.1:$PORT (not started here; stop leaves it running)"
			echo "export IDEM_NATS_URL=nats://127.0.0.1:$PORT"
			return 0
		fi
		ensure_binary
		mkdir -p "$dir/nats"
		nats-server -js -a 127.0.0.1 -p "$PORT" -sd "$dir/nats" >"$dir/nats.log" 2>&1 &
		echo $! >"$pidfile"
		for _ in $(seq 1 100); do
			if port_open; then
				break
			fi
			if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
				log "nats-server exited:"
				cat "$dir/nats.log" >&2
				return 1
			fi
			sleep 0.1
		done
		if ! port_open; then
			log "nats-server did not open port $PORT within 10 s"
			cat "$dir/nats.log" >&2
			return 1
		fi
		log "nats-server pid $(cat "$pidfile") listening on 127.0.0.1:$PORT"
	fi
	echo "export IDEM_NATS_URL=nats://127.0.0.1:$PORT"
}

stop() {
	local dir pidfile pid
	dir="$(svc_dir)"
	pidfile="$dir/nats.pid"
	if [ -f "$pidfile" ]; then
		pid="$(cat "$pidfile")"
		if kill -0 "$pid" 2>/dev/null; then
			kill "$pid"
			for _ in $(seq 1 50); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
			kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
		fi
		rm -f "$pidfile"
		log "stopped nats-server pid $pid"
	fi
	rm -rf "$dir/nats" "$dir/nats.log"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status)
	if port_open; then
		echo "nats-server listening on 127.0.0.1:$PORT"
	else
		echo "nats-server not running"
		exit 1
	fi
	;;
*)
	echo "usage: $0 start|stop|status" >&2
	exit 2
	;;
esac
