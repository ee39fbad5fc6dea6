package main

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/go-logr/logr"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
)

// Every line the process writes goes through the proxy's slog handler, so
// that -log-format json yields only JSON lines. The dependencies that can
// print on their own are routed into it:
//
//   - go-redis prints through a package-level logger (redis.SetLogger), by
//     default to stderr ("redis: … pool.go:770: … failed to dial …"):
//     goRedisLogger, at warn level, attribute lib=go-redis;
//   - the standard log package (and slog.Default) for any code that uses
//     them: routed at warn level (slog.SetDefault, slog.SetLogLoggerLevel);
//   - net/http servers and the reverse proxy have ErrorLog set (serve.go,
//     proxy.go, demo.go);
//   - pgx never prints by itself (it logs only through a Tracer, which the
//     proxy does not set); the server's notices, which pgx drops unless
//     asked, are logged through pgNotice;
//   - bbolt (filestore) prints only through bolt.Options.Logger, which
//     filestore leaves nil: bbolt then discards everything;
//   - OpenTelemetry (-otel-endpoint) reports export failures to its global
//     error handler (by default the log package) and logs through its
//     global logr logger (by default straight to stderr): both are set to
//     otelErrors and otelSink (warn level, lib=opentelemetry; its info
//     lines at debug level).
//
// The routing is process-wide (go-redis and the log package have one
// logger each); routeLibraryLogs installs it for one run and restores the
// previous state after.

// libLog is where the process-wide library loggers write: the logger of the
// run in progress and the secrets to mask in what the libraries print.
var libLog atomic.Pointer[libLogger]

type libLogger struct {
	log     *slog.Logger
	secrets []string
}

// print logs a library's line at level, masking the store URL's secrets.
func (l *libLogger) print(ctx context.Context, level slog.Level, lib, msg string) {
	if !l.log.Enabled(ctx, level) {
		return
	}
	l.log.Log(ctx, level, scrub(strings.TrimRight(msg, "\n"), l.secrets), "lib", lib)
}

// goRedisLogger is the logger given to go-redis (redis.SetLogger): its
// Printf is the method of go-redis's internal.Logging interface.
type goRedisLogger struct{}

// Printf logs one go-redis line at warn level (go-redis prints dial
// failures, cluster state changes and the like, never a routine event).
func (goRedisLogger) Printf(ctx context.Context, format string, v ...any) {
	l := libLog.Load()
	if l == nil {
		return
	}
	if ctx == nil {
		ctx = context.Background()
	}
	l.print(ctx, slog.LevelWarn, "go-redis", strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
}

var setGlobalLoggers sync.Once

// routeLibraryLogs sends what the dependencies print on their own to log,
// with every string of secrets masked, until restore is called. Calls
// nest: restore puts back what was there before.
func routeLibraryLogs(logger *slog.Logger, secrets []string) (restore func()) {
	setGlobalLoggers.Do(func() {
		redis.SetLogger(goRedisLogger{})
		otel.SetErrorHandler(otel.ErrorHandlerFunc(otelErrors))
		otel.SetLogger(logr.New(otelSink{}))
	})
	prevLib := libLog.Swap(&libLogger{log: logger, secrets: secrets})

	prevDefault := slog.Default()
	prevOut, prevFlags, prevPrefix := log.Writer(), log.Flags(), log.Prefix()
	log.SetPrefix("")
	slog.SetDefault(slog.New(&scrubHandler{Handler: logger.Handler(), secrets: secrets}))
	prevLevel := slog.SetLogLoggerLevel(slog.LevelWarn)

	var once sync.Once
	return func() {
		once.Do(func() {
			slog.SetLogLoggerLevel(prevLevel)
			slog.SetDefault(prevDefault)
			log.SetOutput(prevOut)
			log.SetFlags(prevFlags)
			log.SetPrefix(prevPrefix)
			libLog.Store(prevLib)
		})
	}
}

// scrubHandler masks secrets in the messages of records logged through
// slog.Default and the log package (which may print anything).
type scrubHandler struct {
	slog.Handler
	secrets []string
}

func (h *scrubHandler) Handle(ctx context.Context, r slog.Record) error {
	if len(h.secrets) == 0 {
		return h.Handler.Handle(ctx, r)
	}
	c := slog.NewRecord(r.Time, r.Level, scrub(r.Message, h.secrets), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if a.Value.Kind() == slog.KindString {
			a.Value = slog.StringValue(scrub(a.Value.String(), h.secrets))
		}
		c.AddAttrs(a)
		return true
	})
	return h.Handler.Handle(ctx, c)
}

func (h *scrubHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &scrubHandler{Handler: h.Handler.WithAttrs(as), secrets: h.secrets}
}

func (h *scrubHandler) WithGroup(name string) slog.Handler {
	return &scrubHandler{Handler: h.Handler.WithGroup(name), secrets: h.secrets}
}

// otelErrors logs an error OpenTelemetry reports (a failed export, a
// dropped span) at warn level.
func otelErrors(err error) {
	if l := libLog.Load(); l != nil {
		l.print(context.Background(), slog.LevelWarn, "opentelemetry", err.Error())
	}
}

// otelSink is the logr sink of OpenTelemetry's global logger: errors and
// warnings (verbosity 1) at warn level, info (verbosity 4) at debug level,
// debug (verbosity 8) not at all.
type otelSink struct {
	name string
	kv   []any
}

func (otelSink) Init(logr.RuntimeInfo) {}

func (otelSink) Enabled(v int) bool { return v <= 4 }

func (s otelSink) Info(v int, msg string, kv ...any) {
	level := slog.LevelWarn
	if v > 1 {
		level = slog.LevelDebug
	}
	s.log(level, msg, nil, kv)
}

func (s otelSink) Error(err error, msg string, kv ...any) { s.log(slog.LevelWarn, msg, err, kv) }

func (s otelSink) WithValues(kv ...any) logr.LogSink {
	s.kv = append(slices.Clip(s.kv), kv...)
	return s
}

func (s otelSink) WithName(name string) logr.LogSink {
	if s.name != "" {
		name = s.name + "/" + name
	}
	s.name = name
	return s
}

func (s otelSink) log(level slog.Level, msg string, err error, kv []any) {
	l := libLog.Load()
	if l == nil || !l.log.Enabled(context.Background(), level) {
		return
	}
	var b strings.Builder
	if s.name != "" {
		b.WriteString(s.name + ": ")
	}
	b.WriteString(msg)
	if err != nil {
		b.WriteString(": " + err.Error())
	}
	all := append(slices.Clip(s.kv), kv...)
	for i := 0; i+1 < len(all); i += 2 {
		fmt.Fprintf(&b, " %v=%v", all[i], all[i+1])
	}
	l.print(context.Background(), level, "opentelemetry", b.String())
}

// pgNotice logs the notices PostgreSQL sends (pgconn.Config.OnNotice):
// WARNING at warn level, every other severity (NOTICE, INFO, DEBUG, LOG) at
// debug level, such as "relation … already exists, skipping" while
// migrating.
func pgNotice(_ *pgconn.PgConn, n *pgconn.Notice) {
	l := libLog.Load()
	if l == nil {
		return
	}
	level := slog.LevelDebug
	if n.Severity == "WARNING" {
		level = slog.LevelWarn
	}
	l.print(context.Background(), level, "pgx", "postgres "+strings.ToLower(n.Severity)+": "+n.Message)
}
