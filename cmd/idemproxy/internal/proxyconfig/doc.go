// Package proxyconfig parses and validates the configuration of idemproxy:
// the per-route idempotency policy read from a YAML or JSON file, merged with
// the values given on the command line or in IDEMPROXY_* variables.
//
// A file has optional top-level fields for the command's settings (listen,
// upstream, store, admin, scope_secret_file, max_records, max_bytes,
// max_scope_share, require_store, otel_endpoint), a default policy and an
// ordered list of routes:
//
//	upstream: http://127.0.0.1:9000
//	default:
//	  ttl: 24h
//	  lease: 30s
//	  scope_headers: [X-Api-Key]   # extra credential headers (Host, Authorization, Cookie always)
//	  anonymous: refuse            # or allow: callers without credentials share one scope per Host
//	routes:
//	  - name: charges
//	    methods: [POST]
//	    path: /v1/charges/*/capture
//	    fingerprint: canonical-json
//	    wait: 5s
//	  - prefix: /internal/
//	    key: off
//
// Routes are tried in order and the first whose path matcher and method list
// both match wins. A request that matches no route is handled by the default
// policy, which out of the box protects POST and PATCH on every path with a
// required key. Fields a route leaves out are inherited from the default
// policy. Unknown fields, duplicated fields and invalid values are errors
// that name the field, e.g. "routes[2].lease: must be > 0 and < ttl (24h0m0s)".
//
// Parse never panics on any input (FuzzConfig checks this).
package proxyconfig
