package pgxstore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/pgxstore"
)

// The tests share one pool (closed before the leak check); each test gets
// its own schema, dropped at cleanup.
var (
	poolOnce sync.Once
	pool     *pgxpool.Pool
	poolErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if pool != nil {
		pool.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// sharedPool returns the package's pool on IDEM_POSTGRES_DSN, or skips the
// test (fails it under CI=true) when the variable is unset.
func sharedPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	dsn := testenv.Need(t, "IDEM_POSTGRES_DSN")
	poolOnce.Do(func() {
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			poolErr = err
			return
		}
		cfg.MaxConns = 80
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pool, poolErr = pgxpool.NewWithConfig(ctx, cfg)
		if poolErr == nil {
			poolErr = pool.Ping(ctx)
		}
	})
	if poolErr != nil {
		t.Fatalf("postgres at IDEM_POSTGRES_DSN: %v", poolErr)
	}
	return pool
}

// schemaName returns a schema name unique to t and this run.
func schemaName(t testing.TB) string {
	var b strings.Builder
	b.WriteString("t_")
	for _, c := range strings.ToLower(t.Name()) {
		if b.Len() >= 36 {
			break
		}
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	fmt.Fprintf(&b, "_%08x", rand.Uint32())
	return b.String()
}

// newStore returns a migrated Store on the shared pool in a fresh schema
// (o.Schema, if empty), dropped when t ends.
func newStore(t testing.TB, o pgxstore.Options) *pgxstore.Store {
	t.Helper()
	p := sharedPool(t)
	if o.Schema == "" {
		o.Schema = schemaName(t)
	}
	s := pgxstore.New(p, o)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	dropSchema(t, p, o.Schema)
	return s
}

// dropSchema drops schema at the end of t.
func dropSchema(t testing.TB, p *pgxpool.Pool, schema string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := p.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
}

// exec runs sql on the shared pool and fails t on error.
func exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := sharedPool(t).Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// count returns the result of a SELECT count(*) … on the shared pool.
func count(t testing.TB, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := sharedPool(t).QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}
