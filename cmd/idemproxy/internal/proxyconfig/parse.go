package proxyconfig

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Format is the syntax of a config document.
type Format uint8

const (
	// FormatAuto treats a document starting with '{' as JSON, else YAML.
	FormatAuto Format = iota
	// FormatYAML is YAML 1.2 (gopkg.in/yaml.v3), without aliases.
	FormatYAML
	// FormatJSON is JSON (encoding/json).
	FormatJSON
)

// Overrides are policy values given on the command line or in the
// environment. They win over the file's default policy; a route that sets
// the field itself keeps its own value. A zero field overrides nothing.
type Overrides struct {
	TTL   time.Duration
	Lease time.Duration
}

// FieldError is one invalid field. Parse returns one or more of them joined
// with errors.Join; each prints as "field: problem".
type FieldError struct {
	// Field is the path of the field, e.g. "routes[2].lease", or a flag name
	// such as "-lease" for an override.
	Field string
	// Problem says what is wrong and what is expected.
	Problem string
}

// Error implements error.
func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Problem
	}
	return e.Field + ": " + e.Problem
}

// New returns the configuration used without a file: the built-in default
// policy with o applied, and no routes.
func New(o Overrides) (*Config, error) { return Parse(nil, FormatYAML, o) }

// Load reads and parses the file at path. A ".json" file is parsed as JSON,
// a ".yaml" or ".yml" file as YAML, anything else by its content.
func Load(path string, o Overrides) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	f := FormatAuto
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json":
		f = FormatJSON
	case ".yaml", ".yml":
		f = FormatYAML
	}
	c, err := Parse(data, f, o)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse parses and validates a config document. An empty document gives the
// built-in configuration. The error lists every invalid field found (as
// *FieldError values joined with errors.Join) or the syntax error.
func Parse(data []byte, f Format, o Overrides) (*Config, error) {
	if f == FormatAuto {
		f = FormatYAML
		if looksLikeJSON(data) {
			f = FormatJSON
		}
	}
	var (
		n   *node
		err error
	)
	if f == FormatJSON {
		n, err = parseJSON(data)
	} else {
		n, err = parseYAML(data)
	}
	if err != nil {
		return nil, err
	}
	d := &decoder{}
	c := d.config(n, o)
	if len(d.errs) > 0 {
		return nil, errors.Join(d.errs...)
	}
	return c, nil
}

type decoder struct{ errs []error }

func (d *decoder) fail(field, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func (d *decoder) config(n *node, o Overrides) *Config {
	c := &Config{Default: DefaultPolicy()}
	if n.kind == kindNull {
		d.overrides(c, o, nil)
		return c
	}
	if n.kind != kindMap {
		d.fail("", "the document must be a mapping, not %v", n.kind)
		return c
	}
	var defSet map[string]bool
	if v, ok := n.vals["default"]; ok {
		defSet = d.policy("default", v, &c.Default, true)
	}
	d.overrides(c, o, defSet)
	for _, k := range n.keys {
		v := n.vals[k]
		switch k {
		case "default":
		case "listen":
			c.Listen = d.addr(k, v)
		case "admin":
			c.Admin = d.addr(k, v)
		case "upstream":
			if s, ok := d.str(k, v); ok {
				if err := ValidateUpstream(s); err != nil {
					d.fail(k, "%v", err)
				}
				c.Upstream = s
			}
		case "store":
			c.Store, _ = d.str(k, v)
		case "scope_secret_file":
			if s, ok := d.str(k, v); ok {
				if s == "" {
					d.fail(k, "must name a file")
				}
				c.ScopeSecretFile = s
			}
		case "max_records":
			c.MaxRecords = d.budget(k, v, func(s string) error { _, err := ParseCount(s); return err })
		case "max_bytes":
			c.MaxBytes = d.budget(k, v, func(s string) error { _, err := ParseSize(s); return err })
		case "max_scope_share":
			c.MaxScopeShare = d.budget(k, v, func(s string) error { _, err := ParseShare(s); return err })
		case "require_store":
			c.RequireStore, _ = d.boolean(k, v)
		case "legacy_records":
			c.LegacyRecords, _ = d.boolean(k, v)
		case "otel_endpoint":
			c.OTelEndpoint, _ = d.str(k, v)
		case "routes":
			c.Routes = d.routes(k, v, c.Default)
		default:
			d.fail(k, "unknown field (known: listen, upstream, store, admin, scope_secret_file, max_records, max_bytes, max_scope_share, require_store, otel_endpoint, default, routes)")
		}
	}
	return c
}

func (d *decoder) overrides(c *Config, o Overrides, set map[string]bool) {
	p := &c.Default
	if o.TTL < 0 {
		d.fail("-ttl", "must be > 0")
	} else if o.TTL > 0 {
		p.TTL = o.TTL
	}
	if o.Lease < 0 {
		d.fail("-lease", "must be > 0 and < ttl (%v)", p.TTL)
		return
	} else if o.Lease > 0 {
		p.Lease = o.Lease
	}
	if p.Lease >= p.TTL {
		field := "default.lease"
		switch {
		case o.Lease > 0:
			field = "-lease"
		case o.TTL > 0:
			field = "-ttl"
		case set["ttl"] && !set["lease"]:
			field = "default.ttl"
		}
		if strings.HasSuffix(field, "ttl") {
			d.fail(field, "must be > lease (%v)", p.Lease)
		} else {
			d.fail(field, "must be > 0 and < ttl (%v)", p.TTL)
		}
	}
}

var policyFields = "methods, key, ttl, lease, scope_headers, anonymous, fingerprint, stored_statuses, never_replay, max_body, max_result, wait, fail, upstream_timeout"

// policy decodes a policy mapping over p and reports which fields it set.
// Cross-field checks (lease < ttl) are done by the caller for routes.
func (d *decoder) policy(path string, n *node, p *Policy, isDefault bool) map[string]bool {
	set := map[string]bool{}
	if n.kind == kindNull {
		return set
	}
	if n.kind != kindMap {
		d.fail(path, "must be a mapping, not %v", n.kind)
		return set
	}
	for _, k := range n.keys {
		if d.policyField(path, k, n.vals[k], p) {
			set[k] = true
		} else if isDefault {
			d.fail(join(path, k), "unknown field (known: %s)", policyFields)
		}
	}
	if isDefault && set["methods"] && len(p.Methods) == 0 {
		d.fail(join(path, "methods"), "must list at least one method (use key: off to protect nothing)")
	}
	if isDefault && set["ttl"] && set["lease"] && p.Lease >= p.TTL {
		d.fail(join(path, "lease"), "must be > 0 and < ttl (%v)", p.TTL)
	}
	return set
}

// policyField decodes one policy field and reports whether k is a policy
// field at all.
func (d *decoder) policyField(path, k string, v *node, p *Policy) bool {
	f := join(path, k)
	switch k {
	case "methods":
		if l, ok := d.strList(f, v); ok {
			p.Methods = p.Methods[:0:0]
			for i, m := range l {
				if !isToken(m) {
					d.fail(fmt.Sprintf("%s[%d]", f, i), "%q is not an HTTP method", m)
					continue
				}
				p.Methods = append(p.Methods, strings.ToUpper(m))
			}
		}
	case "key":
		if s, ok := d.str(f, v); ok {
			switch s {
			case "required":
				p.Key = KeyRequired
			case "optional":
				p.Key = KeyOptional
			case "off":
				p.Key = KeyOff
			default:
				d.fail(f, "must be required, optional or off, not %q", s)
			}
		}
	case "ttl":
		if x, ok := d.duration(f, v); ok {
			if x <= 0 {
				d.fail(f, "must be > 0")
			} else {
				p.TTL = x
			}
		}
	case "lease":
		if x, ok := d.duration(f, v); ok {
			if x <= 0 {
				d.fail(f, "must be > 0 and < ttl (%v)", p.TTL)
			} else {
				p.Lease = x
			}
		}
	case "scope_headers":
		if l, ok := d.headerList(f, v); ok {
			p.ScopeHeaders = l
		}
	case "anonymous":
		if s, ok := d.str(f, v); ok {
			switch s {
			case "allow":
				p.Anonymous = true
			case "refuse":
				p.Anonymous = false
			default:
				d.fail(f, "must be allow or refuse, not %q", s)
			}
		}
	case "fingerprint":
		if s, ok := d.str(f, v); ok {
			switch s {
			case "default":
				p.Fingerprint = FingerprintDefault
			case "canonical-json":
				p.Fingerprint = FingerprintCanonicalJSON
			default:
				d.fail(f, "must be default or canonical-json, not %q", s)
			}
		}
	case "stored_statuses":
		if s, ok := d.statuses(f, v); ok {
			p.Stored = s
		}
	case "never_replay":
		if l, ok := d.headerList(f, v); ok {
			p.NeverReplay = l
		}
	case "max_body":
		if x, ok := d.size(f, v); ok {
			p.MaxBody = x
		}
	case "max_result":
		if x, ok := d.size(f, v); ok {
			p.MaxResult = x
		}
	case "wait":
		if x, ok := d.duration(f, v); ok {
			if x < 0 {
				d.fail(f, "must be >= 0")
			} else {
				p.Wait = x
			}
		}
	case "fail":
		if s, ok := d.str(f, v); ok {
			switch s {
			case "closed":
				p.FailOpen = false
			case "open":
				p.FailOpen = true
			default:
				d.fail(f, "must be closed or open, not %q", s)
			}
		}
	case "response":
		if s, ok := d.str(f, v); ok {
			switch s {
			case "hold":
				p.Stream = false
			case "stream":
				p.Stream = true
			default:
				d.fail(f, "must be hold or stream, not %q", s)
			}
		}
	case "upstream_timeout":
		if x, ok := d.duration(f, v); ok {
			if x <= 0 {
				d.fail(f, "must be > 0")
			} else {
				p.UpstreamTimeout = x
			}
		}
	default:
		return false
	}
	return true
}

func (d *decoder) routes(path string, n *node, def Policy) []Route {
	if n.kind == kindNull {
		return nil
	}
	if n.kind != kindSeq {
		d.fail(path, "must be a list, not %v", n.kind)
		return nil
	}
	names := map[string]string{}
	out := make([]Route, 0, len(n.items))
	for i, item := range n.items {
		rp := fmt.Sprintf("%s[%d]", path, i)
		r := Route{Name: rp, Policy: def.clone()}
		if item.kind != kindMap {
			d.fail(rp, "must be a mapping, not %v", item.kind)
			continue
		}
		set := map[string]bool{}
		for _, k := range item.keys {
			v := item.vals[k]
			f := join(rp, k)
			switch k {
			case "name":
				if s, ok := d.str(f, v); ok {
					if s == "" || s == "default" {
						d.fail(f, "must be non-empty and not \"default\"")
					} else if prev, dup := names[s]; dup {
						d.fail(f, "%q is already the name of %s", s, prev)
					} else {
						names[s] = rp
						r.Name = s
					}
				}
			case "prefix":
				if s, ok := d.str(f, v); ok {
					if !strings.HasPrefix(s, "/") {
						d.fail(f, "must start with /")
					}
					r.Prefix = s
				}
			case "path":
				if s, ok := d.str(f, v); ok {
					pat, err := compilePattern(s)
					if err != nil {
						d.fail(f, "%v", err)
					}
					r.Path, r.pattern = s, pat
				}
			default:
				if !d.policyField(rp, k, v, &r.Policy) {
					d.fail(f, "unknown field (known: name, prefix, path, %s)", policyFields)
					continue
				}
			}
			set[k] = true
		}
		if set["prefix"] && set["path"] {
			d.fail(rp, "give prefix or path, not both")
		}
		if set["methods"] {
			if len(r.Methods) == 0 {
				d.fail(join(rp, "methods"), "must list at least one method, or be left out to match every method")
			}
		} else {
			r.AnyMethod = true
		}
		if r.Lease >= r.TTL {
			switch {
			case set["lease"] || !set["ttl"]:
				d.fail(join(rp, "lease"), "must be > 0 and < ttl (%v)", r.TTL)
			default:
				d.fail(join(rp, "ttl"), "must be > lease (%v)", r.Lease)
			}
		}
		out = append(out, r)
	}
	return out
}

func compilePattern(s string) ([]string, error) {
	if !strings.HasPrefix(s, "/") {
		return nil, errors.New("must start with /")
	}
	segs := strings.Split(s[1:], "/")
	for i, seg := range segs {
		if strings.Contains(seg, "**") && (seg != "**" || i != len(segs)-1) {
			return nil, errors.New(`"**" may only be the whole last segment`)
		}
		if strings.Contains(seg, "*") && seg != "*" && seg != "**" {
			return nil, fmt.Errorf("segment %q: \"*\" must be a whole segment", seg)
		}
	}
	return segs, nil
}

func (d *decoder) str(f string, v *node) (string, bool) {
	if v.kind != kindScalar || !v.str {
		d.fail(f, "must be a string, not %v", describe(v))
		return "", false
	}
	return v.text, true
}

func (d *decoder) boolean(f string, v *node) (bool, bool) {
	if v.kind == kindScalar && !v.str {
		switch strings.ToLower(v.text) {
		case "true":
			return true, true
		case "false":
			return false, true
		}
	}
	d.fail(f, "must be true or false, not %v", describe(v))
	return false, false
}

func describe(v *node) string {
	if v.kind == kindScalar {
		return fmt.Sprintf("%q", v.text)
	}
	return v.kind.String()
}

func (d *decoder) strList(f string, v *node) ([]string, bool) {
	if v.kind != kindSeq {
		d.fail(f, "must be a list of strings, not %v", describe(v))
		return nil, false
	}
	out := make([]string, 0, len(v.items))
	ok := true
	for i, it := range v.items {
		s, good := d.str(fmt.Sprintf("%s[%d]", f, i), it)
		ok = ok && good
		out = append(out, s)
	}
	return out, ok
}

func (d *decoder) headerList(f string, v *node) ([]string, bool) {
	l, ok := d.strList(f, v)
	if !ok {
		return nil, false
	}
	for i, h := range l {
		if !isToken(h) {
			d.fail(fmt.Sprintf("%s[%d]", f, i), "%q is not a header name", h)
			ok = false
			continue
		}
		l[i] = http.CanonicalHeaderKey(h)
	}
	return l, ok
}

func (d *decoder) duration(f string, v *node) (time.Duration, bool) {
	if v.kind == kindScalar && v.text == "0" {
		return 0, true
	}
	if v.kind != kindScalar || !v.str {
		d.fail(f, "must be a duration such as \"30s\" or \"24h\", not %v", describe(v))
		return 0, false
	}
	x, err := time.ParseDuration(v.text)
	if err != nil {
		d.fail(f, "must be a duration such as \"30s\" or \"24h\", not %q", v.text)
		return 0, false
	}
	return x, true
}

// maxSize bounds byte sizes (1 TiB) so that no arithmetic overflows.
const maxSize = 1 << 40

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"b", 1},
}

func (d *decoder) size(f string, v *node) (int64, bool) {
	const want = "must be a size in bytes > 0 such as 1048576 or \"1MiB\""
	if v.kind != kindScalar {
		d.fail(f, "%s, not %v", want, describe(v))
		return 0, false
	}
	s := strings.ToLower(strings.TrimSpace(v.text))
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > maxSize/mult {
		d.fail(f, "%s, not %q", want, v.text)
		return 0, false
	}
	return n * mult, true
}

func (d *decoder) statuses(f string, v *node) (StatusSet, bool) {
	var s StatusSet
	if v.kind != kindSeq {
		d.fail(f, "must be a list of statuses or ranges such as [\"100-499\", \"!429\"], not %v", describe(v))
		return s, false
	}
	ok := true
	for i, it := range v.items {
		fi := fmt.Sprintf("%s[%d]", f, i)
		if it.kind != kindScalar {
			d.fail(fi, "must be a status such as 201, a range such as \"200-299\", or an exclusion such as \"!429\"")
			ok = false
			continue
		}
		t := strings.TrimSpace(it.text)
		on := true
		if strings.HasPrefix(t, "!") {
			on, t = false, strings.TrimSpace(t[1:])
		}
		lo, hi, err := statusRange(t)
		if err != nil {
			d.fail(fi, "%v", err)
			ok = false
			continue
		}
		s.add(lo, hi, on)
	}
	return s, ok
}

func statusRange(t string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(t, "-")
	lo, err1 := strconv.Atoi(strings.TrimSpace(a))
	hi = lo
	var err2 error
	if isRange {
		hi, err2 = strconv.Atoi(strings.TrimSpace(b))
	}
	if err1 != nil || err2 != nil || lo < 100 || hi > 599 || lo > hi {
		return 0, 0, fmt.Errorf("%q is not a status or range within 100-599", t)
	}
	return lo, hi, nil
}

func (d *decoder) addr(f string, v *node) string {
	s, ok := d.str(f, v)
	if !ok {
		return ""
	}
	if err := ValidateAddr(s); err != nil {
		d.fail(f, "%v", err)
	}
	return s
}

// ValidateAddr reports whether s is a listen address of the form host:port
// (host may be empty, port may be 0).
func ValidateAddr(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("must be host:port such as 127.0.0.1:8080, not %q", s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n > 65535 {
		return fmt.Errorf("port %q is not a number within 0-65535", port)
	}
	return nil
}

// ValidateUpstream reports whether s is an absolute http or https URL with a
// host and neither query nor fragment.
func ValidateUpstream(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("must be an http:// or https:// URL with a host, not %q", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("must not carry a query, fragment or user info: %q", s)
	}
	return nil
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}
