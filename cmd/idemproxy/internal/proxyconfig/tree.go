package proxyconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"gopkg.in/yaml.v3"
)

// node is a format-neutral parse tree of a config document, so that YAML and
// JSON files are checked by the same code and give the same errors.
type node struct {
	kind  nodeKind
	keys  []string         // mapping keys in document order
	vals  map[string]*node // mapping values
	items []*node          // sequence items
	text  string           // scalar text
	str   bool             // scalar was a string (quoted or plain text), not a number or bool
	line  int              // 1-based line, 0 if unknown
}

type nodeKind uint8

const (
	kindNull nodeKind = iota
	kindScalar
	kindMap
	kindSeq
)

func (k nodeKind) String() string {
	switch k {
	case kindScalar:
		return "a scalar"
	case kindMap:
		return "a mapping"
	case kindSeq:
		return "a list"
	}
	return "null"
}

// maxDepth bounds nesting; a valid config is at most 4 levels deep.
const maxDepth = 32

// parseYAML parses a YAML document into a node. Anchors and aliases are
// refused: they are not needed (routes inherit from default) and they allow
// exponentially large documents.
func parseYAML(data []byte) (*node, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &node{kind: kindNull}, nil
		}
		return nil, err // yaml.v3 errors start with "yaml:"
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("yaml: more than one document")
	}
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return &node{kind: kindNull}, nil
		}
		return fromYAML(doc.Content[0], 0)
	}
	return fromYAML(&doc, 0)
}

func fromYAML(y *yaml.Node, depth int) (*node, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("line %d: nested too deeply", y.Line)
	}
	n := &node{line: y.Line}
	switch y.Kind {
	case yaml.AliasNode:
		return nil, fmt.Errorf("line %d: YAML aliases are not supported", y.Line)
	case yaml.ScalarNode:
		if y.Tag == "!!null" {
			n.kind = kindNull
			return n, nil
		}
		n.kind = kindScalar
		n.text = y.Value
		n.str = y.Tag == "!!str" || y.Tag == ""
	case yaml.SequenceNode:
		n.kind = kindSeq
		for _, c := range y.Content {
			cn, err := fromYAML(c, depth+1)
			if err != nil {
				return nil, err
			}
			n.items = append(n.items, cn)
		}
	case yaml.MappingNode:
		n.kind = kindMap
		n.vals = map[string]*node{}
		if len(y.Content)%2 != 0 {
			return nil, fmt.Errorf("line %d: malformed mapping", y.Line)
		}
		for i := 0; i < len(y.Content); i += 2 {
			k, v := y.Content[i], y.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: mapping keys must be plain strings", k.Line)
			}
			if k.Tag == "!!merge" {
				return nil, fmt.Errorf("line %d: YAML merge keys are not supported", k.Line)
			}
			if _, dup := n.vals[k.Value]; dup {
				return nil, fmt.Errorf("line %d: field %q given twice", k.Line, k.Value)
			}
			vn, err := fromYAML(v, depth+1)
			if err != nil {
				return nil, err
			}
			n.keys = append(n.keys, k.Value)
			n.vals[k.Value] = vn
		}
	default:
		return nil, fmt.Errorf("line %d: unexpected YAML node", y.Line)
	}
	return n, nil
}

// parseJSON parses one JSON value into a node, refusing duplicated keys and
// trailing data.
func parseJSON(data []byte) (*node, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	n, err := jsonValue(dec, 0)
	if err != nil {
		if errors.Is(err, io.EOF) {
			if len(bytes.TrimSpace(data)) == 0 {
				return &node{kind: kindNull}, nil
			}
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("json: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("json: data after the top-level value")
	}
	return n, nil
}

func jsonValue(dec *json.Decoder, depth int) (*node, error) {
	if depth > maxDepth {
		return nil, errors.New("nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case nil:
		return &node{kind: kindNull}, nil
	case bool:
		return &node{kind: kindScalar, text: fmt.Sprint(t)}, nil
	case json.Number:
		return &node{kind: kindScalar, text: t.String()}, nil
	case string:
		return &node{kind: kindScalar, text: t, str: true}, nil
	case json.Delim:
		switch t {
		case '[':
			n := &node{kind: kindSeq}
			for dec.More() {
				c, err := jsonValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				n.items = append(n.items, c)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return n, nil
		case '{':
			n := &node{kind: kindMap, vals: map[string]*node{}}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, ok := kt.(string)
				if !ok {
					return nil, fmt.Errorf("unexpected %v", kt)
				}
				if _, dup := n.vals[k]; dup {
					return nil, fmt.Errorf("field %q given twice", k)
				}
				v, err := jsonValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				n.keys = append(n.keys, k)
				n.vals[k] = v
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return n, nil
		}
	}
	return nil, fmt.Errorf("unexpected %v", tok)
}

// looksLikeJSON reports whether data starts, after white space, with '{'.
func looksLikeJSON(data []byte) bool {
	s := strings.TrimLeft(string(data), " \t\r\n\ufeff")
	return strings.HasPrefix(s, "{")
}
