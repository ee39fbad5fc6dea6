#!/usr/bin/env bash
# scripts/test.sh — the whole test suite, as CI runs it (see README).
#
# Installs (Debian packages, if missing) and starts on loopback everything the
# tests need: a standalone redis-server, a 3-master Redis Cluster, a throwaway
# PostgreSQL cluster and a nats-server with JetStream. Then runs gofmt, and in
# every module of the repository (every directory with a go.mod: the core at
# the root, each store, each broker integration, cmd/idemproxy, faults,
# examples, bench) go mod tidy -diff, go vet, staticcheck, every test under
# -race, and a short fuzz pass over every parser. Each module is checked on its
# own (GOWORK=off), as a user who requires it sees it: its go.mod's replace
# directives point at the other modules of the tree. Stops and removes the
# services at the end, whatever happened.
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

# Every module: the directories holding a go.mod, the core (.) first.
mapfile -t modules < <(find . -name go.mod -not -path './vendor/*' -not -path '*/testdata/*' -printf '%h\n' | sort)
echo "test.sh: modules: ${modules[*]}" >&2

# in_modules CMD...: runs CMD in every module's directory, outside the
# workspace (go.work), so each module builds with its own go.mod.
in_modules() {
	local m
	for m in "${modules[@]}"; do
		echo "-- $m: $*" >&2
		(cd "$m" && GOWORK=off "$@")
	done
}

echo "== go mod tidy -diff" >&2
in_modules go mod tidy -diff

echo "== go vet" >&2
in_modules go vet ./...

echo "== staticcheck" >&2
in_modules go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

echo "== fuzz seed corpora and tests (-race)" >&2
tags=""
[ "${IDEM_SOAK:-0}" = 1 ] && tags="-tags=soak"
# The modules one after another, each go test running its packages in parallel.
in_modules go test -race -count=1 -timeout 14m $tags ./...

# The oldest Go the library modules declare: the core, filestore and
# pgxstore say go 1.25.0; build and test them with that toolchain (fetched
# through the module proxy the first time) so the claim stays true.
echo "== go1.25.0 (oldest declared) on the library modules that declare it" >&2
for m in . ./filestore ./pgxstore; do
	if grep -q '^go 1\.25' "$m/go.mod"; then
		echo "-- $m: go1.25.0 vet and test" >&2
		(cd "$m" && GOWORK=off GOTOOLCHAIN=go1.25.0 go vet ./... && GOWORK=off GOTOOLCHAIN=go1.25.0 go test -count=1 ./...)
	fi
done

fuzztime=${IDEM_FUZZTIME:-5s}

# fuzz_one MODULE PKG DIR TARGET: fuzzes one target for $fuzztime. Go's
# fuzzing coordinator (before Go 1.27) can end a duration-bounded run with a
# bare "context deadline exceeded" and no failing input, a race at the
# -fuzztime boundary on loaded machines (golang/go#75804). A failure counts
# when it wrote a failing input (testdata/fuzz/TARGET grew) or said anything
# else; the bare deadline error is run again once, and reported, not hidden,
# if it repeats.
fuzz_one() {
	local m=$1 pkg=$2 dir=$3 fz=$4 try before after
	for try in 1 2; do
		before=$(ls "$dir/testdata/fuzz/$fz" 2>/dev/null | wc -l)
		if (cd "$m" && GOWORK=off go test -run '^$' -fuzz "^${fz}\$" -fuzztime "$fuzztime" "$pkg") >"$IDEM_SVC_DIR/fuzz.log" 2>&1; then
			return 0
		fi
		after=$(ls "$dir/testdata/fuzz/$fz" 2>/dev/null | wc -l)
		if [ "$after" != "$before" ] || grep -q 'Failing input written' "$IDEM_SVC_DIR/fuzz.log" ||
			! grep -q '^    context deadline exceeded$' "$IDEM_SVC_DIR/fuzz.log" ||
			[ "$(grep -c -- '--- FAIL' "$IDEM_SVC_DIR/fuzz.log")" != 1 ]; then
			cat "$IDEM_SVC_DIR/fuzz.log" >&2
			return 1
		fi
		echo "fuzz $fz: the coordinator's deadline race (golang/go#75804), no failing input; try $try" >&2
	done
	echo "WARNING: fuzz $fz ended twice with golang/go#75804 and no failing input; it fuzzed for 2 x $fuzztime" >&2
	return 0
}

if [ "$fuzztime" != 0 ]; then
	echo "== fuzz ($fuzztime per target)" >&2
	# Every FuzzXxx in the tree, found by grep, run alone for a short time
	# from within the module that holds its package (the nearest directory up
	# with a go.mod).
	grep -rl --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(' . | sort | while read -r f; do
		dir=$(dirname "$f")
		m=$dir
		while [ ! -f "$m/go.mod" ]; do m=$(dirname "$m"); done
		pkg=.${dir#"$m"}
		grep -oE '^func Fuzz[A-Za-z0-9_]+' "$f" | sed 's/^func //' | while read -r fz; do
			echo "fuzz $dir $fz" >&2
			fuzz_one "$m" "$pkg" "$dir" "$fz" || exit 1
		done
	done
fi
echo "test.sh: all passed" >&2
