#!/usr/bin/env bash
# scripts/test.sh — the whole test suite, as CI runs it (see README).
#
# Installs (Debian packages, if missing) and starts on loopback everything the
# tests need: a standalone redis-server, a 3-master Redis Cluster, a throwaway
# PostgreSQL cluster and a nats-server with JetStream. Then runs gofmt, go vet,
# every test under -race, and a short fuzz pass over every parser. Stops and
# removes the services at the end, whatever happened.
#
# Environment:
#   IDEM_FUZZTIME   fuzz time per target (default 5s; 0 skips the fuzz pass)
#   IDEM_SOAK=1     also run long soaks (go test -tags soak)
#   CI=true         a missing service fails the run instead of skipping tests
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

IDEM_SVC_DIR=$(mktemp -d /tmp/idem-svc.XXXXXX)
export IDEM_SVC_DIR
chmod 755 "$IDEM_SVC_DIR"

cleanup() {
	set +e
	for s in scripts/redis.sh scripts/postgres.sh scripts/nats.sh; do
		[ -x "$s" ] && "$s" stop >&2
	done
	rm -rf "$IDEM_SVC_DIR"
}
trap cleanup EXIT

start_service() { # name script
	local out
	if ! out=$("$2" start); then
		echo "test.sh: could not start $1" >&2
		exit 1
	fi
	eval "$out"
}

for s in redis postgres nats; do
	if [ -x "scripts/$s.sh" ]; then
		start_service "$s" "scripts/$s.sh"
	fi
done
echo "test.sh: services: redis=${IDEM_REDIS_ADDR:-none} cluster=${IDEM_REDIS_CLUSTER_ADDRS:-none} postgres=${IDEM_POSTGRES_DSN:+yes} nats=${IDEM_NATS_URL:-none}" >&2

echo "== gofmt" >&2
unformatted=$(gofmt -l . | grep -v '^vendor/' || true)
if [ -n "$unformatted" ]; then
	echo "gofmt would change:" >&2
	echo "$unformatted" >&2
	exit 1
fi

echo "== go mod tidy -diff" >&2
go mod tidy -diff

echo "== go vet" >&2
go vet ./...

echo "== staticcheck" >&2
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

echo "== fuzz seed corpora and tests (-race)" >&2
tags=""
[ "${IDEM_SOAK:-0}" = 1 ] && tags="-tags=soak"
go test -race -count=1 -timeout 14m $tags ./...

fuzztime=${IDEM_FUZZTIME:-5s}
if [ "$fuzztime" != 0 ]; then
	echo "== fuzz ($fuzztime per target)" >&2
	# Every FuzzXxx in the module, found by grep, run alone for a short time.
	grep -rl --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(' . | while read -r f; do
		dir=$(dirname "$f")
		grep -oE '^func Fuzz[A-Za-z0-9_]+' "$f" | sed 's/^func //' | while read -r fz; do
			echo "fuzz $dir $fz" >&2
			if ! go test -run '^$' -fuzz "^${fz}\$" -fuzztime "$fuzztime" "$dir" >"$IDEM_SVC_DIR/fuzz.log" 2>&1; then
				cat "$IDEM_SVC_DIR/fuzz.log" >&2
				exit 1
			fi
		done
	done
fi
echo "test.sh: all passed" >&2
