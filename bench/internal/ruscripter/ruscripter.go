// Package ruscripter adapts a rueidis client to go-redis's redis.Scripter,
// so that redisstore (Options.Scripter) runs its scripts through rueidis in
// the benchmarks that compare Redis clients.
package ruscripter

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

// Scripter runs redisstore's scripts through a rueidis client: it
// implements go-redis's redis.Scripter (what redisstore.Options.Scripter
// takes) on top of rueidis.Client.Do, whose concurrent calls rueidis writes
// to the server together (auto-pipelining). Replies are converted to the
// values go-redis returns (int64, string, []any, nil), a nil reply to
// redis.Nil and a server error to an error go-redis recognizes as one (so
// that Script.Run falls back from EVALSHA to EVAL on NOSCRIPT).
type Scripter struct{ c rueidis.Client }

// New returns a Scripter on c. c must be made with DisableRetry, so that no
// script whose outcome is unknown is sent again (redisstore's rule).
func New(c rueidis.Client) *Scripter { return &Scripter{c: c} }

var _ redis.Scripter = (*Scripter)(nil)

func (s *Scripter) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return s.do(ctx, s.c.B().Eval().Script(script).Numkeys(int64(len(keys))).Key(keys...).Arg(strArgs(args)...).Build())
}

func (s *Scripter) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return s.do(ctx, s.c.B().Evalsha().Sha1(sha1).Numkeys(int64(len(keys))).Key(keys...).Arg(strArgs(args)...).Build())
}

func (s *Scripter) EvalRO(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return s.do(ctx, s.c.B().EvalRo().Script(script).Numkeys(int64(len(keys))).Key(keys...).Arg(strArgs(args)...).Build())
}

func (s *Scripter) EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return s.do(ctx, s.c.B().EvalshaRo().Sha1(sha1).Numkeys(int64(len(keys))).Key(keys...).Arg(strArgs(args)...).Build())
}

func (s *Scripter) ScriptExists(ctx context.Context, hashes ...string) *redis.BoolSliceCmd {
	vs, err := s.c.Do(ctx, s.c.B().ScriptExists().Sha1(hashes...).Build()).AsIntSlice()
	out := make([]bool, len(vs))
	for i, v := range vs {
		out[i] = v == 1
	}
	return redis.NewBoolSliceResult(out, convErr(err))
}

func (s *Scripter) ScriptLoad(ctx context.Context, script string) *redis.StringCmd {
	v, err := s.c.Do(ctx, s.c.B().ScriptLoad().Script(script).Build()).ToString()
	return redis.NewStringResult(v, convErr(err))
}

func (s *Scripter) do(ctx context.Context, cmd rueidis.Completed) *redis.Cmd {
	v, err := s.c.Do(ctx, cmd).ToAny()
	if err != nil {
		return redis.NewCmdResult(nil, convErr(err))
	}
	return redis.NewCmdResult(v, nil)
}

// serverError is an error reply of the server, as go-redis's redis.Error.
type serverError string

func (e serverError) Error() string { return string(e) }
func (serverError) RedisError()     {}

func convErr(err error) error {
	if err == nil {
		return nil
	}
	if rueidis.IsRedisNil(err) {
		return redis.Nil
	}
	var re *rueidis.RedisError
	if errors.As(err, &re) {
		return serverError(re.Error())
	}
	return err
}

// strArgs formats script arguments as go-redis would.
func strArgs(args []any) []string {
	out := make([]string, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case string:
			out[i] = v
		case []byte:
			out[i] = string(v)
		case int:
			out[i] = strconv.Itoa(v)
		case int64:
			out[i] = strconv.FormatInt(v, 10)
		case uint64:
			out[i] = strconv.FormatUint(v, 10)
		case float64:
			out[i] = strconv.FormatFloat(v, 'f', -1, 64)
		default:
			out[i] = fmt.Sprint(v)
		}
	}
	return out
}
