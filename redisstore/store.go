package redisstore

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/idemkit/idem"
	"github.com/redis/go-redis/v9"
)

var (
	_ idem.Store     = (*Store)(nil)
	_ idem.Extender  = (*Store)(nil)
	_ idem.Waiter    = (*Store)(nil)
	_ idem.Inspector = (*Store)(nil)
)

// Defaults for the zero fields of Options.
const (
	// DefaultPrefix is the key prefix used when Options.Prefix is empty.
	DefaultPrefix = "idem:"
	// DefaultWaitTimeout bounds WAIT when Options.WaitTimeout is zero.
	DefaultWaitTimeout = time.Second
	// DefaultPollInterval is the fallback polling period of Wait.
	DefaultPollInterval = 200 * time.Millisecond
)

// Options configures a Store. The zero value is valid. The client given to
// New should not resend commands (go-redis MaxRetries: -1): see the package
// documentation, "Client retries".
type Options struct {
	// Prefix starts every Redis key (and notification channel) the store
	// uses. If empty, DefaultPrefix ("idem:") is used. Give each application
	// sharing a Redis its own prefix. A prefix that contains a hash tag
	// ("app{1}:") puts every record in one Redis Cluster slot: correct, but
	// not spread over the cluster.
	Prefix string

	// WaitReplicas, if positive, makes Begin (when it acquires a key) and
	// Complete wait until that many replicas acknowledged the write, with
	// WAIT pipelined after the script in the same round trip. If fewer
	// acknowledge within WaitTimeout, the call fails closed with
	// ErrStoreUnavailable; a Begin that acquired the key then releases it
	// (best effort) so that a retry can execute. See docs/redis.md for what
	// this does and does not protect against.
	WaitReplicas int

	// WaitTimeout bounds each WAIT. If zero, DefaultWaitTimeout (1 s) is
	// used. It is rounded up to whole milliseconds (WAIT's unit; WAIT with 0
	// would block until enough replicas acknowledge) and capped at half the
	// client's ReadTimeout (go-redis's default is 5 s), so that WAIT's answer
	// arrives before the client gives up reading.
	WaitTimeout time.Duration

	// Abandon is how long an in-progress record is kept after its lease
	// ended (its executor crashed or stalled). Within it, a Begin takes the
	// record over (fence+1, reported as a takeover), the old executor's
	// Complete is still accepted if nobody took over, and a different
	// fingerprint is refused as a mismatch. After it, Redis expires the key
	// and the key is new again. If zero, idem.DefaultRetention (24 h) is
	// used, as in memstore.
	Abandon time.Duration

	// DisableNotify turns off the PUBLISH (SPUBLISH on a Cluster) that
	// Complete and Release send to waiting duplicates; Wait then polls every
	// PollInterval. Set it for a Redis Cluster older than 7, which has no
	// sharded pub/sub.
	DisableNotify bool

	// Scripter, if set, runs the scripts of Begin (without WaitReplicas),
	// Release, Extend and Get, and of Complete without WaitReplicas, instead
	// of the client: for instance a go-redis AutoPipeliner made from the same
	// client, which sends the scripts of concurrent requests in shared
	// writes. Each request still waits for its own reply (one round trip).
	// It must talk to the same servers as the client, which keeps serving
	// WAIT pipelines and subscriptions. If nil, the client is used.
	Scripter redis.Scripter

	// AutoPipeline, when Scripter is nil, runs the same scripts through the
	// client's go-redis AutoPipeliner (Client.AutoPipeline or
	// ClusterClient.AutoPipeline; with NativeBegin, the deferred one,
	// AsyncAutoPipeline, which also carries the native Begin's commands):
	// the commands of concurrent calls are written to the server together,
	// so they share system calls on both sides; each call still waits for
	// its own replies (one round trip). The AutoPipeliner is the client's,
	// created on first use and closed with the client; it resends a batch
	// after a network error only within the client's MaxRetries, so keep
	// MaxRetries at -1 (see "Client retries").
	// With another client type, or if the AutoPipeliner cannot be made, the
	// client is used directly. idemproxy turns it on for single-server and
	// Sentinel URLs. On a Cluster it works (the conformance suite passes)
	// but, measured after a primary's failover, its own routing served the
	// dead primary's slots again 0.7–3.5 s after the promotion, against
	// 0.1–0.2 s without it (TestClusterFailoverServedAgain).
	AutoPipeline bool

	// LegacyRecords writes new records under LegacyKey's name and in the
	// layout of versions before the compact records (2026-12), which those
	// versions read, instead of under Key's name in the compact layout
	// (about 110 bytes less per record; see docs/capacity.md). Records of
	// both kinds are always found and changed where they are. Set it while
	// instances of an older version share the Redis (a rolling upgrade),
	// and remove it once every instance runs this version: an older version
	// does not see records under the compact name, so it would execute
	// their retries again. See CHANGELOG.md.
	LegacyRecords bool

	// SkipLegacyKeys stops looking for records under LegacyKey's name: the
	// scripts read the record with a GET of one key instead of an MGET of
	// two (the same number of commands, a little less work). Set it when no
	// version before the compact records (2026-12) has written to this
	// Redis for longer than the retention (and the abandonment period,
	// Abandon): then no record is left under a legacy name. It is ignored
	// with LegacyRecords.
	SkipLegacyKeys bool

	// NativeBegin makes Begin first try its native path (see Store.Begin):
	// SET … NX GET PX on the compact key, PEXPIRETIME of it and a GET of the
	// legacy key, in one round trip and without a script. It trades
	// application CPU for Redis CPU: measured with AutoPipeline, a first
	// execution cost Redis about 15 µs less and the application about 15 µs
	// more (docs/bench/redis.md, "The native Begin, and the floor"), so it pays where many
	// application instances share one Redis primary and Redis is the limit.
	// Without AutoPipeline or an AutoPipeliner as Scripter its commands are
	// not batched with other calls', and it costs Redis more, not less.
	// Every instance sharing the Redis must run a version that reads the
	// native records (2026-12-03 or later, see CHANGELOG.md). It is ignored
	// with WaitReplicas and LegacyRecords.
	NativeBegin bool

	// PollInterval is how long one Wait sleeps when notifications are
	// disabled or the subscription cannot be established. If zero,
	// DefaultPollInterval (200 ms) is used.
	PollInterval time.Duration
}

// Store is an idem.Store on Redis. Each step (Begin, Complete, Release,
// Extend, Get) is one Lua script run with EVALSHA (EVAL on a server that
// lost its script cache), so each is atomic and costs one round trip.
// Store also implements idem.Extender, idem.Waiter and idem.Inspector.
//
// A Store is safe for concurrent use. It starts no goroutine until the first
// Wait; Close stops them.
type Store struct {
	c       redis.UniversalClient
	sc      redis.Scripter       // runs the scripts: Options.Scripter or c
	cluster *redis.ClusterClient // non-nil when c is a Redis Cluster client
	prefix  string
	replica int
	waitTO  time.Duration
	abandon time.Duration
	notify  string               // "p", "s" or "" (ARGV for the scripts)
	newKey  string               // where Begin puts a new record: "1" Key, "2" LegacyKey
	legacy  bool                 // look for records under LegacyKey too
	native  bool                 // Begin tries nativeBegin first
	nap     *redis.AutoPipeliner // deferred AutoPipeliner for nativeBegin, or nil
	poll    time.Duration

	mu  sync.Mutex
	hub *hub // lazily created by Wait; nil after Close
	off bool // Close was called
}

// New returns a Store that keeps its records in c, which may be a single
// server, Sentinel (failover) or Cluster client, preferably made with
// MaxRetries: -1 (see the package documentation, "Client retries"). New
// does no I/O. The caller keeps ownership of c: closing the Store does not
// close c.
func New(c redis.UniversalClient, o Options) *Store {
	s := &Store{
		c:       c,
		sc:      o.Scripter,
		prefix:  o.Prefix,
		replica: o.WaitReplicas,
		waitTO:  o.WaitTimeout,
		abandon: o.Abandon,
		poll:    o.PollInterval,
		notify:  "p",
		newKey:  "1",
		legacy:  !o.SkipLegacyKeys || o.LegacyRecords,
	}
	if o.LegacyRecords {
		s.newKey = "2"
	}
	if s.sc == nil && o.AutoPipeline {
		var ap *redis.AutoPipeliner
		var err error
		// *redis.Client and *redis.ClusterClient.
		if c, ok := c.(interface {
			AutoPipeline() (*redis.AutoPipeliner, error)
			AsyncAutoPipeline() (*redis.AutoPipeliner, error)
		}); ok {
			if o.NativeBegin {
				ap, err = c.AsyncAutoPipeline()
			} else {
				ap, err = c.AutoPipeline()
			}
		}
		if ap != nil && err == nil {
			s.sc = ap
		}
	}
	if s.sc == nil {
		s.sc = c
	}
	if ap, ok := s.sc.(*redis.AutoPipeliner); ok && !ap.IsBlocking() {
		s.nap = ap
	}
	s.native = o.NativeBegin && !o.LegacyRecords && o.WaitReplicas <= 0
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if s.waitTO <= 0 {
		s.waitTO = DefaultWaitTimeout
	}
	if s.abandon <= 0 {
		s.abandon = idem.DefaultRetention
	}
	if s.poll <= 0 {
		s.poll = DefaultPollInterval
	}
	var readTimeout time.Duration
	switch c := c.(type) {
	case *redis.ClusterClient:
		s.cluster = c
		s.notify = "s"
		readTimeout = c.Options().ReadTimeout
	case *redis.Client:
		readTimeout = c.Options().ReadTimeout
	}
	if readTimeout > 0 && s.waitTO > readTimeout/2 {
		// WAIT's reply must arrive before the client stops reading.
		s.waitTO = readTimeout / 2
	}
	if o.DisableNotify {
		s.notify = ""
	}
	return s
}

// AutoPipelined reports whether the store sends its scripts through an
// AutoPipeliner (Options.AutoPipeline, or an AutoPipeliner given as
// Options.Scripter).
func (s *Store) AutoPipelined() bool {
	_, ok := s.sc.(*redis.AutoPipeliner)
	return ok
}

// Key returns the compact Redis key of the record for the store key key
// (also the channel Wait listens on): Prefix, "{", 16 hex digits of the
// first 8 bytes of the key's SHA-256 as the Redis Cluster hash tag, "}",
// then the next 15 bytes of the SHA-256 in unpadded base64url (20
// characters): 43 bytes with the default prefix, whatever the key's length.
// Distinct keys get distinct names (184 bits of SHA-256), and the hash tag
// is made of hex digits only, so no key can choose its slot. The store key
// itself is not kept: Get (and idemproxy's admin API) finds a record from
// its key.
func (s *Store) Key(key string) string { return s.names(key, false)[0] }

// LegacyKey returns the Redis key under which versions before the compact
// records kept the record for key, and under which the store still finds
// (and, with Options.LegacyRecords, writes) it: Prefix, the same hash tag as
// Key's, then key itself. Both names are in one Redis Cluster slot.
func (s *Store) LegacyKey(key string) string { return s.names(key, true)[1] }

// keys returns the KEYS of every script: Key(key) and LegacyKey(key), or
// only Key(key) with SkipLegacyKeys.
func (s *Store) keys(key string) []string { return s.names(key, s.legacy) }

// names returns Key(key) and, if legacy, LegacyKey(key), sharing one
// string.
func (s *Store) names(key string, legacy bool) []string {
	sum := sha256.Sum256([]byte(key))
	head := len(s.prefix) + 18 // prefix and hash tag
	n := head + base64.RawURLEncoding.EncodedLen(15)
	if legacy {
		n += head + len(key)
	}
	b := make([]byte, 0, n)
	b = append(b, s.prefix...)
	b = append(b, '{')
	b = hex.AppendEncode(b, sum[:8])
	b = append(b, '}')
	b = base64.RawURLEncoding.AppendEncode(b, sum[8:23])
	if !legacy {
		return []string{string(b)}
	}
	c := len(b)
	b = append(b, b[:head]...)
	b = append(b, key...)
	all := string(b)
	return []string{all[:c], all[c:]}
}

// maxFence is the largest fence the store issues: fences are server times in
// µs (plus takeovers), held exactly by Lua's doubles up to 2^53. A larger
// fence cannot hold any record.
const maxFence = 1<<53 - 1

// giveBackTimeout is the least time allowed to the best-effort release of a
// key acquired by a Begin that then failed closed.
const giveBackTimeout = time.Second

// micros returns d in whole microseconds, at least 1.
func micros(d time.Duration) int64 { return max(int64((d+time.Microsecond-1)/time.Microsecond), 1) }

// millis returns d in whole milliseconds rounded up, at least 1.
func millis(d time.Duration) int64 { return max(int64((d+time.Millisecond-1)/time.Millisecond), 1) }

// inProgressTTL is the PEXPIRE of an in-progress record: lease + Abandon.
func (s *Store) inProgressTTL(lease time.Duration) int64 {
	return millis(lease) + millis(s.abandon)
}

// check validates the arguments every method shares.
func check(ctx context.Context, op, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("redisstore: %s: %w", op, err)
	}
	if key == "" {
		return fmt.Errorf("redisstore: %s: %w: empty", op, idem.ErrInvalidKey)
	}
	return nil
}

// fail wraps a Redis error. Every failure to get an answer is
// ErrStoreUnavailable (the caller fails closed); Redis's out-of-memory
// refusal is ErrStoreFull; when ctx ended meanwhile, the ctx error is wrapped
// too.
func fail(ctx context.Context, op string, err error) error {
	sentinel := idem.ErrStoreUnavailable
	if strings.HasPrefix(err.Error(), "OOM ") {
		sentinel = idem.ErrStoreFull
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("redisstore: %s: %w: %w (%w)", op, cerr, sentinel, err)
	}
	return fmt.Errorf("redisstore: %s: %w: %w", op, sentinel, err)
}

// brokenConn reports whether err means that the connection a command ran
// on broke (so the same read may succeed on another connection): not a
// Redis error reply, not a closed client, not a timeout (the server may be
// stalled: trying again would double the wait) and not a failed dial (the
// server is down; go-redis already retried the dial).
func brokenConn(err error) bool {
	var re redis.Error
	if errors.As(err, &re) || errors.Is(err, redis.ErrClosed) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op != "dial" && !oe.Timeout()
}

// topologyMayHaveChanged asks a Cluster client to reload its slot map after
// err: a connection failure or timeout (the node may be dead, its replica
// promoted), or a CLUSTERDOWN, TRYAGAIN, MOVED or ASK reply. A dead primary
// never answers MOVED, and go-redis otherwise reloads the map only on its
// own period, so without this the slots of a failed-over primary would stay
// unreachable long after the promotion. The reload runs in the background,
// at most one at a time with a 200 ms cooldown (go-redis's LazyReload), so
// calling this on every failure is cheap. Other Redis error replies (a
// script error, OOM, NOSCRIPT) say nothing about the topology.
func (s *Store) topologyMayHaveChanged(err error) {
	if s.cluster == nil || errors.Is(err, redis.Nil) {
		return
	}
	var re redis.Error
	if errors.As(err, &re) {
		msg := re.Error()
		if !strings.HasPrefix(msg, "CLUSTERDOWN") && !strings.HasPrefix(msg, "TRYAGAIN") &&
			!strings.HasPrefix(msg, "MOVED") && !strings.HasPrefix(msg, "ASK") && !strings.HasPrefix(msg, "READONLY") {
			return
		}
	}
	s.cluster.ReloadState(context.Background())
}

// clusterAttempts bounds how many times runOnPrimary sends one script.
const clusterAttempts = 4

// runOnPrimary runs sc on the record key k on a Redis Cluster through the
// client of the key's primary, not through the cluster client: the cluster
// client sends a command again after a network error or a timeout (within
// its MaxRedirects), although the first may have run, whereas a node client
// inherits MaxRetries (-1, no resend, unless the caller set it). The script
// is sent again here only when the answer proves that it did not run: a
// failed dial or pool wait, or a MOVED, ASK, TRYAGAIN, CLUSTERDOWN,
// LOADING, MASTERDOWN or READONLY reply. A MOVED or ASK reply is followed
// by the cluster client itself (one more attempt; it knows where the slot
// went before the slot map reload has finished). Any other failure returns
// at once: the outcome is unknown and the Keeper settles it with Get.
func (s *Store) runOnPrimary(ctx context.Context, sc *redis.Script, keys []string, args ...any) (any, error) {
	k := keys[0]
	backoff := 25 * time.Millisecond
	for attempt := 1; ; attempt++ {
		node, err := s.cluster.MasterForKey(ctx, k)
		var v any
		if err == nil {
			v, err = sc.Run(ctx, node, keys, args...).Result()
			if err == nil {
				return v, nil
			}
		}
		s.topologyMayHaveChanged(err)
		if redirected(err) {
			return sc.Run(ctx, s.c, keys, args...).Result()
		}
		if attempt >= clusterAttempts || ctx.Err() != nil || !notRun(err) {
			return nil, err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		backoff *= 2
	}
}

// redirected reports a MOVED or ASK reply: the slot is served elsewhere and
// the command did not run.
func redirected(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "MOVED ") || strings.HasPrefix(msg, "ASK ")
}

// notRun reports whether err proves that a command was not run: its
// connection could not be made, or the server refused it before running
// it (the cluster's state or the node's role).
func notRun(err error) bool {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return true
	}
	if errors.Is(err, redis.ErrPoolTimeout) {
		return true
	}
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	msg := re.Error()
	for _, p := range []string{"TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN", "READONLY"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// isNoScript reports a NOSCRIPT reply (the server lost its script cache, e.g.
// after a restart or a failover).
func isNoScript(err error) bool {
	return err != nil && (errors.Is(err, redis.ErrNoScript) || strings.HasPrefix(err.Error(), "NOSCRIPT"))
}

// run runs sc on a record's keys (s.keys). When durable is set and
// WaitReplicas is positive, WAIT is pipelined after the script on the same
// connection, and acked reports whether enough replicas acknowledged.
func (s *Store) run(ctx context.Context, sc *redis.Script, keys []string, durable bool, args ...any) (v any, acked bool, err error) {
	k := keys[0]
	if s.cluster != nil && s.sc == redis.Scripter(s.c) && (!durable || s.replica <= 0) {
		v, err = s.runOnPrimary(ctx, sc, keys, args...)
		return v, true, err
	}
	if !durable || s.replica <= 0 {
		v, err = sc.Run(ctx, s.sc, keys, args...).Result()
		if err != nil {
			s.topologyMayHaveChanged(err)
		}
		return v, true, err
	}
	// WAIT counts the writes of the connection it runs on, so it must follow
	// the script on the same connection: one pipeline on the node that owns
	// the key.
	var pipe redis.Pipeliner
	if s.cluster != nil {
		node, err := s.cluster.MasterForKey(ctx, k)
		if err != nil {
			return nil, false, err
		}
		pipe = node.Pipeline()
	} else {
		pipe = s.c.Pipeline()
	}
	ev := sc.EvalSha(ctx, pipe, keys, args...)
	w := pipe.Do(ctx, "wait", s.replica, millis(s.waitTO))
	_, _ = pipe.Exec(ctx)
	if isNoScript(ev.Err()) {
		ev = sc.Eval(ctx, pipe, keys, args...)
		w = pipe.Do(ctx, "wait", s.replica, millis(s.waitTO))
		_, _ = pipe.Exec(ctx)
	}
	if err := ev.Err(); err != nil {
		s.topologyMayHaveChanged(err)
		return nil, false, err
	}
	n, err := w.Int64()
	if err != nil {
		return ev.Val(), false, err
	}
	return ev.Val(), n >= int64(s.replica), nil
}

// Begin applies SPEC §2's begin step (see idem.Store). With WaitReplicas
// set, an acquisition that the replicas did not acknowledge is released
// again (best effort) and reported as ErrStoreUnavailable.
//
// Begin's script decides, in one round trip. With NativeBegin, a new key
// and a completed record cost one round trip of native commands instead
// (nativeBegin); a record in progress or released, and a record found
// under the legacy name, are then decided by the script, a second round
// trip.
func (s *Store) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	if err := check(ctx, "begin", key); err != nil {
		return idem.Begun{}, err
	}
	if lease <= 0 {
		return idem.Begun{}, fmt.Errorf("redisstore: begin: lease %v is not positive", lease)
	}
	k := s.keys(key)
	if s.native && len(fp) < 256 {
		b, done, err := s.nativeBegin(ctx, k, fp, lease)
		if done || err != nil {
			return b, err
		}
	}
	v, acked, err := s.run(ctx, beginScript, k, true, fp, micros(lease), s.inProgressTTL(lease), s.newKey)
	if err != nil && v == nil {
		return idem.Begun{}, fail(ctx, "begin", err)
	}
	b, perr := parseBegun(v)
	if perr != nil {
		return idem.Begun{}, fmt.Errorf("redisstore: begin: %w", perr)
	}
	if b.Outcome == idem.Acquired && (err != nil || !acked) {
		// The write may be lost in a failover: give the key back so that a
		// retry executes, and fail closed.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(s.waitTO, giveBackTimeout))
		_, _, _ = s.run(rctx, releaseScript, k, false, strconv.FormatUint(b.Fence, 10), s.notify)
		cancel()
		if err == nil {
			err = fmt.Errorf("WAIT: fewer than %d replicas acknowledged within %v", s.replica, s.waitTO)
		}
		return idem.Begun{}, fail(ctx, "begin", err)
	}
	return b, nil
}

// nativeRecord is the "N" record nativeBegin writes (see scripts.go): the
// key's TTL in ms and the lease in µs, from which the scripts derive its
// times, then the fingerprint (shorter than 256 bytes).
func nativeRecord(fp []byte, ttl, lease int64) []byte {
	b := make([]byte, 18+len(fp))
	b[0] = 'N'
	binary.BigEndian.PutUint64(b[1:], math.Float64bits(float64(ttl)))
	binary.BigEndian.PutUint64(b[9:], math.Float64bits(float64(lease)))
	b[17] = byte(len(fp))
	copy(b[18:], fp)
	return b
}

// nativeBegin is Begin's native path, one round trip without a script:
//
//	SET compact-key N-record PX ttl NX GET
//	PEXPIRETIME compact-key
//	GET legacy-key            (unless SkipLegacyKeys)
//
// SET … NX GET creates the record if the key is free and otherwise leaves
// the key alone and answers its value. PEXPIRETIME, on the same connection
// right after it (or in order on the deferred AutoPipeliner's stream),
// then gives the new record's expiry, from which its fence is derived
// (fence = (expiry − ttl) ms, in µs: the server's clock at the creation,
// as the scripts derive it).
//
// done reports whether the outcome is decided: Acquired (the key was
// free, and nothing is under the legacy name), Replay or Mismatch (a
// compact completed record). Otherwise Begin's script decides: a record in
// progress (lease left, takeover), a tombstone, a record in a legacy
// layout, or one under the legacy name; in the last case the "N" just
// written is deleted again first (best effort: the scripts prefer the
// legacy record anyway). A failure that proves the commands did not run
// also leaves the decision to the script, which retries on a Cluster; any
// other failure is returned, the outcome unknown, as for the script.
func (s *Store) nativeBegin(ctx context.Context, k []string, fp []byte, lease time.Duration) (b idem.Begun, done bool, err error) {
	ttl := s.inProgressTTL(lease)
	set := redis.NewCmd(ctx, "set", k[0], nativeRecord(fp, ttl, micros(lease)), "px", ttl, "nx", "get")
	exp := redis.NewCmd(ctx, "pexpiretime", k[0])
	cmds := []redis.Cmder{set, exp}
	var leg *redis.Cmd
	if len(k) > 1 {
		leg = redis.NewCmd(ctx, "get", k[1])
		cmds = append(cmds, leg)
	}
	if err := s.process(ctx, k[0], cmds); err != nil {
		s.topologyMayHaveChanged(err)
		if s.cluster != nil && (notRun(err) || redirected(err)) {
			return idem.Begun{}, false, nil
		}
		return idem.Begun{}, false, fail(ctx, "begin", err)
	}
	v, err := set.Text()
	if err == nil {
		return decided(v, fp)
	}
	// redis.Nil: the key was free and the "N" record is ours.
	e, err := exp.Int64()
	n := (e - ttl) * 1000
	if err != nil || e <= ttl || n > maxFence {
		return idem.Begun{}, false, fmt.Errorf("redisstore: begin: PEXPIRETIME after SET NX answered %v, %v", e, err)
	}
	if leg != nil && leg.Err() == nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), giveBackTimeout)
		_, _, _ = s.run(rctx, abortScript, k[:1], false, strconv.FormatInt(n, 10), s.notify)
		cancel()
		return idem.Begun{}, false, nil
	}
	return idem.Begun{Outcome: idem.Acquired, Fence: uint64(n)}, true, nil
}

// decided interprets the record nativeBegin's SET … NX GET found: a compact
// completed record is a Replay or a Mismatch; anything else is left to the
// script.
func decided(v string, fp []byte) (idem.Begun, bool, error) {
	if len(v) < 18 || v[0] != 'C' || len(v) < 18+int(v[17]) {
		return idem.Begun{}, false, nil
	}
	end := 18 + int(v[17])
	if v[18:end] != string(fp) {
		return idem.Begun{Outcome: idem.Mismatch}, true, nil
	}
	return idem.Begun{Outcome: idem.Replay, Result: []byte(v[end:])}, true, nil
}

// process sends cmds to the server that owns key in one round trip, in
// order, and waits for every reply: through the deferred AutoPipeliner,
// or as a pipeline on one connection of the client (of the key's primary
// on a Cluster: the cluster client would send a pipeline again after a
// network error). It returns the first error other than redis.Nil.
func (s *Store) process(ctx context.Context, key string, cmds []redis.Cmder) error {
	if s.nap != nil {
		for _, c := range cmds {
			_ = s.nap.Process(ctx, c)
		}
	} else {
		var p redis.Pipeliner
		if s.cluster != nil {
			node, err := s.cluster.MasterForKey(ctx, key)
			if err != nil {
				return err
			}
			p = node.Pipeline()
		} else {
			p = s.c.Pipeline()
		}
		for _, c := range cmds {
			_ = p.Process(ctx, c)
		}
		_, _ = p.Exec(ctx)
	}
	for _, c := range cmds {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
	}
	return nil
}

// parseBegun decodes the reply of beginScript.
func parseBegun(v any) (idem.Begun, error) {
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return idem.Begun{}, fmt.Errorf("unexpected reply %#v", v)
	}
	code, _ := a[0].(int64)
	switch {
	case code == 1 && len(a) == 3:
		f, err := fence(a[1])
		return idem.Begun{Outcome: idem.Acquired, Fence: f, Takeover: a[2] == int64(1)}, err
	case code == 2 && len(a) == 3:
		f, err := fence(a[1])
		left, _ := a[2].(int64)
		return idem.Begun{Outcome: idem.InFlight, Fence: f, LeaseLeft: time.Duration(left) * time.Microsecond}, err
	case code == 3 && len(a) == 4:
		r, _ := a[3].(string)
		return idem.Begun{Outcome: idem.Replay, Result: []byte(r)}, nil
	case code == 4:
		return idem.Begun{Outcome: idem.Mismatch}, nil
	}
	return idem.Begun{}, fmt.Errorf("unexpected reply %#v", v)
}

// fence parses a fence the scripts return: an integer, or a decimal string.
func fence(v any) (uint64, error) {
	switch v := v.(type) {
	case int64:
		if v > 0 {
			return uint64(v), nil
		}
	case string:
		if f, err := strconv.ParseUint(v, 10, 64); err == nil && f > 0 {
			return f, nil
		}
	}
	return 0, fmt.Errorf("bad fence %#v", v)
}

// Complete stores result for the in-progress record held by fence and keeps
// it for retention (Redis PEXPIRE), in one round trip; it then wakes waiting
// duplicates. A stale fence, or a record that is gone, gives
// idem.ErrLeaseLost and changes nothing. With WaitReplicas set, a completion
// the replicas did not acknowledge is reported as ErrStoreUnavailable: the
// record is completed on the primary but may be lost in a failover.
func (s *Store) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	if err := check(ctx, "complete", key); err != nil {
		return err
	}
	if fence > maxFence {
		return fmt.Errorf("redisstore: complete: %w", idem.ErrLeaseLost)
	}
	if retention <= 0 {
		return fmt.Errorf("redisstore: complete: retention %v is not positive", retention)
	}
	if result == nil {
		result = []byte{}
	}
	// At least 2 ms, so that the record outlives its fence's millisecond
	// (see "Fences only grow" in scripts.go).
	v, acked, err := s.run(ctx, completeScript, s.keys(key), true, strconv.FormatUint(fence, 10), result, max(millis(retention), 2), s.notify)
	return s.done(ctx, "complete", v, acked, err)
}

// Release deletes the in-progress record held by fence, in one round trip, so
// that the next Begin executes, and wakes waiting duplicates. A stale fence,
// or a record that is gone, gives idem.ErrLeaseLost and changes nothing.
func (s *Store) Release(ctx context.Context, key string, fence uint64) error {
	if err := check(ctx, "release", key); err != nil {
		return err
	}
	if fence > maxFence {
		return fmt.Errorf("redisstore: release: %w", idem.ErrLeaseLost)
	}
	v, acked, err := s.run(ctx, releaseScript, s.keys(key), false, strconv.FormatUint(fence, 10), s.notify)
	return s.done(ctx, "release", v, acked, err)
}

// Extend sets the lease of the in-progress record held by fence to end lease
// from now (server clock), in one round trip. A stale fence, or a record that
// is gone, gives idem.ErrLeaseLost and changes nothing.
func (s *Store) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	if err := check(ctx, "extend", key); err != nil {
		return err
	}
	if fence > maxFence {
		return fmt.Errorf("redisstore: extend: %w", idem.ErrLeaseLost)
	}
	if lease <= 0 {
		return fmt.Errorf("redisstore: extend: lease %v is not positive", lease)
	}
	v, acked, err := s.run(ctx, extendScript, s.keys(key), false, strconv.FormatUint(fence, 10), micros(lease), s.inProgressTTL(lease))
	return s.done(ctx, "extend", v, acked, err)
}

// done interprets the 1/0 reply of the fenced scripts.
func (s *Store) done(ctx context.Context, op string, v any, acked bool, err error) error {
	if err != nil && v == nil {
		return fail(ctx, op, err)
	}
	switch v {
	case int64(1):
	case int64(0):
		return fmt.Errorf("redisstore: %s: %w", op, idem.ErrLeaseLost)
	default:
		return fmt.Errorf("redisstore: %s: unexpected reply %#v", op, v)
	}
	if err != nil {
		return fail(ctx, op, err)
	}
	if !acked {
		return fail(ctx, op, fmt.Errorf("WAIT: fewer than %d replicas acknowledged within %v", s.replica, s.waitTO))
	}
	return nil
}

// getRetries is how many more times Get runs its script after an attempt
// failed on a broken connection.
const getRetries = 2

// Get returns the record for key without changing it, in one round trip
// (one read-only script: GET, TIME and PTTL). Age and Remaining are judged
// by the server's clock; Remaining is the lease left (zero once the lease
// ended) for an in-progress record and the retention left for a completed
// one. A missing record (never created, released, or expired by Redis) is
// reported with ok == false and no error.
//
// Get is the idem.Inspector a caller uses to learn whether a change whose
// reply was lost was applied, which is when connections are likely to be
// broken. Because it only reads, Get runs again, at most twice more and
// while ctx allows, when an attempt fails on a broken connection (reset,
// closed, end of file); a timeout, a refused dial and a Redis error reply
// are returned at once. The client's own retries (go-redis MaxRetries) are
// not needed for Get; see the package documentation on why the changing
// steps should not have them.
func (s *Store) Get(ctx context.Context, key string) (rec idem.Record, ok bool, err error) {
	if err := check(ctx, "get", key); err != nil {
		return idem.Record{}, false, err
	}
	k := s.keys(key)
	var v any
	for retries := getRetries; ; retries-- {
		v, _, err = s.run(ctx, getScript, k, false)
		if err == nil || retries == 0 || ctx.Err() != nil || !brokenConn(err) {
			break
		}
	}
	if err != nil {
		return idem.Record{}, false, fail(ctx, "get", err)
	}
	a, _ := v.([]any)
	if len(a) == 1 && a[0] == int64(0) {
		return idem.Record{}, false, nil
	}
	if len(a) != 8 {
		return idem.Record{}, false, fmt.Errorf("redisstore: get: unexpected reply %#v", v)
	}
	str := func(i int) string { x, _ := a[i].(string); return x }
	us := func(i int) int64 { x, _ := strconv.ParseInt(str(i), 10, 64); return x }
	f, err := fence(a[2])
	if err != nil {
		return idem.Record{}, false, fmt.Errorf("redisstore: get: %w", err)
	}
	now := us(6)
	rec = idem.Record{
		Fingerprint: []byte(str(1)),
		Fence:       f,
		Age:         time.Duration(max(now-us(4), 0)) * time.Microsecond,
	}
	switch str(0) {
	case "p":
		rec.State = idem.StateInProgress
		rec.Remaining = time.Duration(max(us(3)-now, 0)) * time.Microsecond
	default:
		rec.State = idem.StateCompleted
		rec.Result = []byte(str(5))
		pttl, _ := a[7].(int64)
		rec.Remaining = time.Duration(max(pttl, 0)) * time.Millisecond
	}
	return rec, true, nil
}
