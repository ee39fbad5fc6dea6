package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/idemkit/idem/cmd/idemproxy/internal/proxyconfig"
)

// version is set at link time: -ldflags "-X main.version=v1.2.3". When
// empty, the module version from the build info is reported.
var version string

// Defaults of the command line (the contract in docs/idemproxy.md).
const (
	defaultListen          = "127.0.0.1:8080"
	defaultStore           = "file:idem.db"
	defaultShutdownTimeout = 30 * time.Second
	defaultSweepInterval   = 10 * time.Minute
	envPrefix              = "IDEMPROXY_"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal starts the graceful shutdown, a second one
	// kills the process at once (the default behaviour).
	go func() {
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if _, logged := errors.AsType[*loggedError](err); !logged {
			fmt.Fprintln(os.Stderr, "idemproxy:", err)
		}
		var ue *usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a bad flag, environment variable or config file: the
// process exits 2 before listening.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// loggedError is an error that stopped the proxy after its logger was set
// up, already logged through it (so that -log-format json output stays
// JSON): main does not print it again.
type loggedError struct{ err error }

func (e *loggedError) Error() string { return e.err.Error() }
func (e *loggedError) Unwrap() error { return e.err }

// options are the resolved command-line settings.
type options struct {
	listen, upstream, store, admin string
	config, adminToken             string
	adminTokenFile                 string
	// scopeSecretFile is -scope-secret-file; scopeSecret is the secret
	// resolved from it, IDEMPROXY_SCOPE_SECRET or the config (nil: none
	// given, see storeScopeSecret), and scopeSecretFrom says where from.
	scopeSecretFile                string
	scopeSecret                    []byte
	scopeSecretFrom                string
	logFormat, logLevel            string
	ttl, lease                     time.Duration
	shutdownTimeout, sweepInterval time.Duration
	demo, version                  bool
	// requireStore is -require-store: exit 1 when the store cannot be
	// reached at start, instead of warning (see checkStore).
	requireStore bool
	// legacyRecords is -legacy-records (or the file's legacy_records).
	legacyRecords bool
	// otelEndpoint is -otel-endpoint: where traces go (OTLP over HTTP);
	// empty disables tracing.
	otelEndpoint string
	// Store budgets for memory: and file: (see stores.go storeBudget).
	maxRecords, maxBytes, maxScopeShare string
	budget                              storeBudget

	cfg *proxyconfig.Config
	// storeGiven is true when -store came from a flag, the environment or
	// the config file (the demo uses a temporary file: store otherwise).
	storeGiven bool
	// listenGiven is true when -listen came from a flag, the environment or
	// the config file (the demo falls back to a free port otherwise).
	listenGiven bool
}

// lookupEnv is os.LookupEnv; tests replace it.
var lookupEnv = os.LookupEnv

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("idemproxy", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", defaultListen, "`address` the proxy listens on (port 0 picks a free port; the bound address is logged)")
	fs.StringVar(&o.upstream, "upstream", "", "`URL` of the upstream API (required unless -demo)")
	fs.StringVar(&o.store, "store", defaultStore, "record store `URL`: memory:, file:PATH, redis://…, rediss://…, redis+cluster://host1,host2, redis+sentinel://s1,s2/master, postgres://…")
	fs.DurationVar(&o.ttl, "ttl", proxyconfig.DefaultTTL, "retention of completed records (`duration`); routes in -config may set their own")
	fs.DurationVar(&o.lease, "lease", proxyconfig.DefaultLease, "lease of an executing request, renewed while it runs (`duration`, < ttl)")
	fs.StringVar(&o.admin, "admin", "", "`address` of the admin listener (/healthz, /readyz, /metrics, /keys); empty disables it")
	fs.StringVar(&o.config, "config", "", "YAML or JSON `file` with per-route policy (see docs/idemproxy.md)")
	fs.StringVar(&o.adminToken, "admin-token", "", "bearer `token` for the admin /keys endpoint; empty disables /keys (prefer -admin-token-file: a flag is visible in ps)")
	fs.StringVar(&o.adminTokenFile, "admin-token-file", "", "`file` holding the bearer token for the admin /keys endpoint (surrounding white space trimmed)")
	fs.StringVar(&o.scopeSecretFile, "scope-secret-file", "", "`file` holding the secret (at least 16 bytes, surrounding white space trimmed) that keys the HMAC of each caller's scope; "+
		"required with redis and postgres stores (the same on every instance); IDEMPROXY_SCOPE_SECRET may hold the secret itself. Default: file: stores keep a generated one in PATH.scope-secret, memory: uses a random one")
	fs.StringVar(&o.logFormat, "log-format", "text", "log `format`: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", defaultShutdownTimeout, "on SIGTERM/SIGINT, how long in-flight requests may take to finish (`duration`)")
	fs.DurationVar(&o.sweepInterval, "sweep-interval", defaultSweepInterval, "how often expired records are swept from stores that keep them (`duration`; 0 disables)")
	fs.StringVar(&o.maxRecords, "max-records", "auto", "most records a memory: or file: store holds (`count`, auto or off); auto is 100000 for memory:, 1000000 for file:. New keys beyond it get 503 store-full; stored keys still replay")
	fs.StringVar(&o.maxBytes, "max-bytes", "auto", "most bytes of keys, fingerprints and responses a memory: or file: store holds (`size` such as 256MiB, auto or off); auto is 256MiB for memory:, 1GiB for file:")
	fs.StringVar(&o.maxScopeShare, "max-scope-share", "0.5", "largest `share` of -max-records and -max-bytes one scope (caller) may hold, a fraction in (0, 1] or a percentage (1 disables the quota)")
	fs.BoolVar(&o.legacyRecords, "legacy-records", false, "store responses in the encoding, and Redis records under the names and in the layout, that idemproxy versions before 2026-12 read: set it during a rolling upgrade while older instances share the store, then remove it (see CHANGELOG.md)")
	fs.BoolVar(&o.requireStore, "require-store", false, "exit 1 when the store cannot be reached at start (by default the proxy warns, starts, and answers 503 store-unavailable until the store is back)")
	fs.StringVar(&o.otelEndpoint, "otel-endpoint", "", "OTLP/HTTP `URL` (http://127.0.0.1:4318, or host:port) to send a trace span per request to, continuing the request's W3C trace context and passing it to the upstream; empty disables tracing")
	fs.BoolVar(&o.demo, "demo", false, "run a demo payments API behind the proxy and print curl commands to try")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	return fs
}

// envName returns the environment variable of a flag: IDEMPROXY_ADMIN_TOKEN
// for -admin-token.
func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseArgs resolves the settings: a flag wins over its IDEMPROXY_*
// variable, which wins over the config file, which wins over the default.
// It returns flag.ErrHelp after writing the usage to stdout for -h.
func parseArgs(args []string, stdout io.Writer) (*options, error) {
	o := &options{}
	fs := newFlagSet(o)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			usage(fs)
			return nil, flag.ErrHelp
		}
		return nil, &usageError{fmt.Errorf("%w (run idemproxy -h for the flags)", err)}
	}
	if fs.NArg() > 0 {
		return nil, &usageError{fmt.Errorf("unexpected argument %q (run idemproxy -h for the flags)", fs.Arg(0))}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		v, ok := lookupEnv(envName(f.Name))
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %v", envName(f.Name), v, err))
			return
		}
		set[f.Name] = true
	})
	if len(errs) > 0 {
		return nil, &usageError{errors.Join(errs...)}
	}
	if o.version {
		return o, nil
	}

	var ov proxyconfig.Overrides
	if set["ttl"] {
		ov.TTL = o.ttl
		if o.ttl <= 0 {
			ov.TTL = -1
		}
	}
	if set["lease"] {
		ov.Lease = o.lease
		if o.lease <= 0 {
			ov.Lease = -1
		}
	}
	var err error
	if o.config != "" {
		o.cfg, err = proxyconfig.Load(o.config, ov)
	} else {
		o.cfg, err = proxyconfig.New(ov)
	}
	if err != nil {
		return nil, &usageError{err}
	}
	fromFile := func(name string, dst *string, file string) {
		if !set[name] && file != "" {
			*dst = file
			set[name] = true
		}
	}
	fromFile("listen", &o.listen, o.cfg.Listen)
	fromFile("upstream", &o.upstream, o.cfg.Upstream)
	fromFile("store", &o.store, o.cfg.Store)
	fromFile("admin", &o.admin, o.cfg.Admin)
	fromFile("max-records", &o.maxRecords, o.cfg.MaxRecords)
	fromFile("max-bytes", &o.maxBytes, o.cfg.MaxBytes)
	fromFile("max-scope-share", &o.maxScopeShare, o.cfg.MaxScopeShare)
	fromFile("otel-endpoint", &o.otelEndpoint, o.cfg.OTelEndpoint)
	if !set["require-store"] && o.cfg.RequireStore {
		o.requireStore = true
	}
	if set["legacy-records"] {
		o.cfg.LegacyRecords = o.legacyRecords
	}
	o.storeGiven = set["store"]
	o.listenGiven = set["listen"]
	o.ttl, o.lease = o.cfg.Default.TTL, o.cfg.Default.Lease

	if err := o.validate(); err != nil {
		return nil, &usageError{err}
	}
	if err := o.resolveScopeSecret(set["scope-secret-file"]); err != nil {
		return nil, &usageError{err}
	}
	return o, nil
}

func (o *options) validate() error {
	var errs []error
	if err := proxyconfig.ValidateAddr(o.listen); err != nil {
		errs = append(errs, fmt.Errorf("-listen: %v", err))
	}
	if o.admin != "" {
		if err := proxyconfig.ValidateAddr(o.admin); err != nil {
			errs = append(errs, fmt.Errorf("-admin: %v", err))
		}
	}
	if o.adminTokenFile != "" {
		switch tok, err := readTokenFile(o.adminTokenFile); {
		case o.adminToken != "":
			errs = append(errs, errors.New("-admin-token-file: give either -admin-token or -admin-token-file, not both"))
		case err != nil:
			errs = append(errs, fmt.Errorf("-admin-token-file: %v", err))
		default:
			o.adminToken = tok
		}
	}
	if o.adminToken != "" && o.admin == "" {
		errs = append(errs, errors.New("-admin-token: needs -admin"))
	}
	switch {
	case o.upstream == "" && !o.demo:
		errs = append(errs, errors.New("-upstream: required (or run idemproxy -demo)"))
	case o.upstream != "" && o.demo:
		errs = append(errs, errors.New("-upstream: not allowed with -demo, which runs its own upstream"))
	case o.upstream != "":
		if err := proxyconfig.ValidateUpstream(o.upstream); err != nil {
			errs = append(errs, fmt.Errorf("-upstream: %v", err))
		}
	}
	if o.otelEndpoint != "" {
		if _, err := parseOTelEndpoint(o.otelEndpoint); err != nil {
			errs = append(errs, fmt.Errorf("-otel-endpoint: %v", err))
		}
	}
	if _, err := parseStoreURL(o.store); err != nil {
		errs = append(errs, fmt.Errorf("-store: %v", err))
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		errs = append(errs, fmt.Errorf("-log-format: must be text or json, not %q", o.logFormat))
	}
	if _, err := parseLevel(o.logLevel); err != nil {
		errs = append(errs, fmt.Errorf("-log-level: %v", err))
	}
	if o.shutdownTimeout <= 0 {
		errs = append(errs, errors.New("-shutdown-timeout: must be > 0"))
	}
	if o.sweepInterval < 0 {
		errs = append(errs, errors.New("-sweep-interval: must be >= 0"))
	}
	var err error
	if o.budget.records, err = proxyconfig.ParseCount(o.maxRecords); err != nil {
		errs = append(errs, fmt.Errorf("-max-records: %v", err))
	}
	if o.budget.bytes, err = proxyconfig.ParseSize(o.maxBytes); err != nil {
		errs = append(errs, fmt.Errorf("-max-bytes: %v", err))
	}
	if o.budget.share, err = proxyconfig.ParseShare(o.maxScopeShare); err != nil {
		errs = append(errs, fmt.Errorf("-max-scope-share: %v", err))
	}
	return errors.Join(errs...)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	switch s {
	case "debug", "info", "warn", "error":
		err := l.UnmarshalText([]byte(s))
		return l, err
	}
	return l, fmt.Errorf("must be debug, info, warn or error, not %q", s)
}

func usage(fs *flag.FlagSet) {
	w := fs.Output()
	fmt.Fprint(w, `Usage: idemproxy -listen ADDR -upstream URL -store URL [-ttl DURATION] [-lease DURATION] [-admin ADDR] [-config FILE]
       idemproxy -demo

idemproxy is a reverse proxy that makes POST and PATCH requests carrying an
Idempotency-Key header safe to retry: the first request reaches the upstream
once, retries get the stored response, concurrent duplicates get 409 and a
reused key with a different request gets 422.

Every flag can also be set by an environment variable: IDEMPROXY_ and the flag
name in upper case with '-' as '_' (IDEMPROXY_LISTEN, IDEMPROXY_ADMIN_TOKEN).
A flag on the command line wins over its variable, which wins over the config
file, which wins over the default.

Flags:
`)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	sort.Strings(names)
	for _, n := range names {
		f := fs.Lookup(n)
		arg, help := flag.UnquoteUsage(f)
		line := "  -" + f.Name
		if arg != "" {
			line += " " + arg
		}
		fmt.Fprintf(w, "%s\n    \t%s", line, help)
		if f.DefValue != "" && f.DefValue != "false" {
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		}
		fmt.Fprintf(w, "  [%s]\n", envName(f.Name))
	}
}

// versionString returns the link-time version, else the module version from
// the build info, plus the VCS revision when known.
func versionString() string {
	v := version
	bi, ok := debug.ReadBuildInfo()
	if v == "" && ok {
		v = bi.Main.Version
	}
	if v == "" {
		v = "(devel)"
	}
	if ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
		v += " " + bi.GoVersion
	}
	return "idemproxy " + v
}

// run is the whole program: it parses args, serves until ctx is done, shuts
// down gracefully and returns nil, or returns the error that stopped it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseArgs(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if o.version {
		fmt.Fprintln(stdout, versionString())
		return nil
	}
	level, _ := parseLevel(o.logLevel)
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(stderr, hopts)
	if o.logFormat == "json" {
		h = slog.NewJSONHandler(stderr, hopts)
	}
	log := slog.New(h)
	// What the dependencies print goes to the same handler, with the store
	// URL's secrets masked.
	restore := routeLibraryLogs(log, secrets(o.store))
	defer restore()
	if err := serve(ctx, o, log, stdout); err != nil {
		log.Error("exiting on error", "err", err.Error())
		return &loggedError{err}
	}
	return nil
}
