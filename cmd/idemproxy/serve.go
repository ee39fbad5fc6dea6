package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/idemkit/idem"
)

// serve runs the proxy (and the demo upstream with -demo) until ctx is done,
// then shuts down: it stops accepting, lets in-flight requests finish within
// -shutdown-timeout (their records are completed or released), and closes
// the store.
func serve(ctx context.Context, o *options, log *slog.Logger, stdout io.Writer) (err error) {
	var demo *demoUpstream
	if o.demo {
		demo, err = startDemo(log)
		if err != nil {
			return err
		}
		defer demo.close()
		o.upstream = demo.url
		if !o.storeGiven {
			dir, err := os.MkdirTemp("", "idemproxy-demo-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			o.store = "file:" + filepath.Join(dir, "idem.db")
		}
		o.cfg.Routes = append(demoRoutes(o.cfg), o.cfg.Routes...)
	}
	upstream, err := url.Parse(o.upstream)
	if err != nil {
		return err
	}
	spec, err := parseStoreURL(o.store)
	if err != nil {
		return err
	}
	spec.budget = o.budget
	if spec.redis != nil {
		spec.redis.store.LegacyRecords = o.cfg.LegacyRecords
	}
	st, err := openStore(ctx, spec, log)
	if err != nil {
		return fmt.Errorf("store %s: %w", redact(o.store), err)
	}
	defer func() {
		if cerr := st.close(); cerr != nil {
			log.Error("closing the store", "err", cerr)
			err = errors.Join(err, cerr)
		} else {
			log.Info("store closed")
		}
	}()

	if err := checkStore(ctx, st, o.requireStore, log); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil // a signal during the check: nothing to shut down yet
	}

	scopeSecret, err := storeScopeSecret(o, spec, log)
	if err != nil {
		return err
	}
	var tr *tracing
	if o.otelEndpoint != "" {
		if tr, err = newTracing(o.otelEndpoint, scopeSecret); err != nil {
			return fmt.Errorf("-otel-endpoint: %w", err)
		}
		defer func() {
			// After the last request: its span is ended, and exported now.
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := tr.shutdown(sctx); err != nil {
				log.Warn("exporting the last spans failed", "err", err)
			}
		}()
	}
	m := newMetrics()
	px, err := newProxy(o.cfg, upstream, m.instrumentStore(st.store), m, log, scopeSecret, tr)
	if err != nil {
		return err
	}
	defer px.abort()
	var active sync.WaitGroup
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		active.Add(1)
		defer active.Done()
		px.ServeHTTP(w, r)
	})

	ln, err := net.Listen("tcp", o.listen)
	if err != nil && demo != nil && !o.listenGiven && errors.Is(err, syscall.EADDRINUSE) {
		log.Warn("the default address is taken; the demo uses a free port", "addr", o.listen)
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	var adminSrv *http.Server
	var adminLn net.Listener
	if o.admin != "" {
		adminLn, err = net.Listen("tcp", o.admin)
		if err != nil {
			ln.Close()
			return fmt.Errorf("-admin: %w", err)
		}
		adminSrv = &http.Server{
			Handler:           newAdmin(st.store, o, m, px),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
	}

	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if adminSrv != nil {
		go func() { errc <- adminSrv.Serve(adminLn) }()
	}
	stopSweep := startSweeper(st.store, o.sweepInterval, log)

	attrs := []any{"addr", ln.Addr().String(), "upstream", o.upstream, "store", st.desc, "routes", len(o.cfg.Routes)}
	if adminLn != nil {
		attrs = append(attrs, "admin", adminLn.Addr().String())
	}
	if st.budget != "" {
		attrs = append(attrs, "budget", st.budget)
	}
	if tr != nil {
		attrs = append(attrs, "otel_endpoint", o.otelEndpoint)
	}
	log.Info("listening", attrs...)
	if demo != nil {
		printDemo(stdout, "http://"+ln.Addr().String(), adminLn)
	}

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "timeout", o.shutdownTimeout.String())
	case serveErr = <-errc:
		log.Error("server failed", "err", serveErr)
	}
	stopSweep()

	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	if adminSrv != nil {
		_ = adminSrv.Shutdown(sctx)
	}
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("in-flight requests did not finish in time; canceling them", "err", err)
		px.abort()
		_ = srv.Close()
		if adminSrv != nil {
			_ = adminSrv.Close()
		}
	}
	// Close cancels the requests' contexts; their records are still
	// completed or released (detached from the request context) before the
	// handlers return. Wait for that, bounded, before closing the store.
	waited := make(chan struct{})
	go func() { active.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		log.Error("handlers still running after shutdown; closing the store anyway")
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// startSweeper sweeps expired records every interval on stores that keep
// them (idem.Sweeper). The returned function stops it and waits for it.
func startSweeper(s idem.Store, every time.Duration, log *slog.Logger) (stop func()) {
	sw, ok := s.(idem.Sweeper)
	if !ok || every <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), every)
			n, err := sw.Sweep(ctx)
			cancel()
			if err != nil {
				log.Warn("sweep failed", "err", err)
			} else if n > 0 {
				log.Debug("swept expired records", "n", n)
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); <-exited }) }
}
