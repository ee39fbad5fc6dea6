#!/usr/bin/env bash
# redis.sh start|stop|status — throwaway Redis servers on loopback for the
# redisstore tests and benchmarks: one standalone server and a 3-master Redis
# Cluster (no replicas).
#
#   eval "$(scripts/redis.sh start)"   # prints the two export lines below
#   scripts/redis.sh stop              # stops what start started, removes data
#
# start prints, on stdout and nothing else:
#   export IDEM_REDIS_ADDR=127.0.0.1:16379
#   export IDEM_REDIS_CLUSTER_ADDRS=127.0.0.1:17001,127.0.0.1:17002,127.0.0.1:17003
# All logs go to stderr. Servers run under $IDEM_SVC_DIR/redis (default:
# ${TMPDIR:-/tmp}/idem-svc-$UID), bound to 127.0.0.1, with persistence off
# (--save '' --appendonly no): they are for tests only and hold nothing worth
# keeping. When redis-server is missing, Debian's redis-server package is
# installed with apt-get. The Debian package may start a system redis on
# 6379; this script never uses it. start is idempotent: servers that already
# answer on their ports are reused, and the cluster is created only once.
#
# Ports: IDEM_REDIS_PORT (default 16379) and IDEM_REDIS_CLUSTER_PORTS
# (default "17001 17002 17003").
set -euo pipefail

PORT="${IDEM_REDIS_PORT:-16379}"
CPORTS="${IDEM_REDIS_CLUSTER_PORTS:-17001 17002 17003}"
HOST=127.0.0.1

log() { printf 'redis.sh: %s\n' "$*" >&2; }

svc_dir() {
	local d="${IDEM_SVC_DIR:-${TMPDIR:-/tmp}/idem-svc-$(id -u)}"
	mkdir -p "$d/redis"
	printf '%s\n' "$d/redis"
}

install_redis() {
	if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
		return 0
	fi
	log "redis-server not found; installing the Debian package"
	local sudo=""
	[ "$(id -u)" -ne 0 ] && sudo="sudo"
	$sudo apt-get update >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y redis-server >&2
}

ping() { # port
	[ "$(redis-cli -h "$HOST" -p "$1" ping 2>/dev/null)" = "PONG" ]
}

start_server() { # port dir extra-args...
	local port=$1 dir=$2
	shift 2
	if ping "$port"; then
		log "reusing redis on $HOST:$port"
		return 0
	fi
	mkdir -p "$dir"
	redis-server --port "$port" --bind "$HOST" --dir "$dir" \
		--daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
		--save '' --appendonly no "$@" >&2
}

wait_ping() { # port
	local i
	for i in $(seq 1 100); do
		ping "$1" && return 0
		sleep 0.05
	done
	log "redis on $HOST:$1 did not answer; log follows"
	cat "$(svc_dir)/$1/redis.log" >&2 || true
	return 1
}

cluster_ok() {
	local p
	for p in $CPORTS; do
		redis-cli -h "$HOST" -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
	done
}

start() {
	install_redis
	local dir p addrs=""
	dir="$(svc_dir)"
	start_server "$PORT" "$dir/$PORT"
	for p in $CPORTS; do
		start_server "$p" "$dir/$p" --cluster-enabled yes \
			--cluster-config-file "$dir/$p/nodes.conf" --cluster-node-timeout 2000
	done
	wait_ping "$PORT"
	for p in $CPORTS; do
		wait_ping "$p"
		addrs="$addrs $HOST:$p"
	done
	if ! cluster_ok; then
		local first
		first="$(set -- $CPORTS; echo "$1")"
		if [ "$(redis-cli -h "$HOST" -p "$first" cluster info | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p')" = 1 ]; then
			log "creating cluster on$addrs"
			# shellcheck disable=SC2086
			redis-cli --cluster create $addrs --cluster-replicas 0 --cluster-yes >&2
		fi
		local i
		for i in $(seq 1 200); do
			cluster_ok && break
			sleep 0.05
		done
		cluster_ok || { log "cluster did not reach state ok"; return 1; }
	fi
	printf 'export IDEM_REDIS_ADDR=%s:%s\n' "$HOST" "$PORT"
	printf 'export IDEM_REDIS_CLUSTER_ADDRS=%s\n' "$(echo $addrs | tr ' ' ',')"
}

stop() {
	local dir p pid
	dir="$(svc_dir)"
	for p in $PORT $CPORTS; do
		[ -f "$dir/$p/redis.pid" ] || continue
		pid="$(cat "$dir/$p/redis.pid")"
		if kill "$pid" 2>/dev/null; then
			local i
			for i in $(seq 1 100); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.05
			done
			kill -9 "$pid" 2>/dev/null || true
			log "stopped redis on $HOST:$p (pid $pid)"
		fi
		rm -rf "${dir:?}/$p"
	done
}

status() {
	local p rc=0
	for p in $PORT $CPORTS; do
		if ping "$p"; then log "$HOST:$p up"; else log "$HOST:$p down"; rc=1; fi
	done
	return $rc
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*)
	echo "usage: $0 start|stop|status" >&2
	exit 2
	;;
esac
