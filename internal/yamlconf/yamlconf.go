// Package yamlconf decodes webgw's YAML configuration files strictly (an
// unknown key is an error) and words yaml's errors for people: each names
// the dotted key it is about (limits.idle_timeout, gateways[0].addr) instead
// of a Go type.
package yamlconf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Decode decodes one YAML document from data into v, refusing unknown keys.
// An empty document leaves v as it is and returns nil.
func Decode(data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return errors.New(describe(data, err))
	}
	return nil
}

var unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)

// describe returns err's message; for type and unknown-key errors, which
// yaml reports by line only, each "line N: ..." part names the key on it.
func describe(data []byte, err error) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return strings.TrimPrefix(err.Error(), "yaml: ")
	}
	keys := keysByLine(data)
	msgs := make([]string, len(te.Errors))
	for i, e := range te.Errors {
		var line int
		_, serr := fmt.Sscanf(e, "line %d:", &line)
		key := ""
		if serr == nil && len(keys[line]) > 0 {
			key = strings.Join(keys[line], ", ")
		}
		switch {
		case unknownField.MatchString(e) && key != "":
			msgs[i] = fmt.Sprintf("line %d: unknown key %q", line, key)
		case unknownField.MatchString(e):
			msgs[i] = unknownField.ReplaceAllString(e, `unknown key "$1"`)
		case key != "":
			msgs[i] = fmt.Sprintf("%s (key %s)", e, key)
		default:
			msgs[i] = e
		}
	}
	return strings.Join(msgs, "; ")
}

// keysByLine maps each line of a YAML document to the dotted keys whose
// values (or, for unknown keys, whose names) are on it.
func keysByLine(data []byte) map[int][]string {
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil {
		return nil
	}
	out := make(map[int][]string)
	var walk func(n *yaml.Node, path string, depth int)
	walk = func(n *yaml.Node, path string, depth int) {
		if depth > 32 {
			return
		}
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path, depth+1)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				if v.Kind == yaml.ScalarNode || v.Kind == yaml.AliasNode {
					out[v.Line] = append(out[v.Line], p)
				} else {
					if k.Line != v.Line {
						out[k.Line] = append(out[k.Line], p)
					}
					walk(v, p, depth+1)
				}
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if c.Kind == yaml.ScalarNode || c.Kind == yaml.AliasNode {
					out[c.Line] = append(out[c.Line], p)
				} else {
					walk(c, p, depth+1)
				}
			}
		}
	}
	walk(&root, "", 0)
	return out
}
