package webgw_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/webgw/webgw"

// rank orders the packages: a package may import only packages of a lower
// rank (DESIGN.md: dependencies point down). A new package must be added here.
var rank = map[string]int{
	"internal/yamlconf":    0,
	"internal/model":       0,
	"internal/netns":       0,
	"internal/store":       1,
	"internal/tunnel":      1,
	"internal/route":       2,
	"internal/cluster":     2,
	"internal/wg4to6":      1,
	"internal/ygg":         1,
	"internal/ygg/yggtest": 1,
	"internal/proxy":       3,
	"internal/certs":       4,
	"internal/control":     4,
	"internal/edge":        4,
	"internal/dns":         4,
	"internal/api":         4,
	"internal/agent":       5,
	"internal/gateway":     5,
	"cmd/webgw":            6,

	"internal/netpolicy": 1,
	// Test and benchmark packages sit on top of everything.
	"internal/store/storetest": 2,
	"test/e2e":                 7,
	"bench":                    7,

	"internal/proxyproto": 1,
	"internal/resolve":    1,
}

type pkgInfo struct {
	imports map[string]bool // our packages imported by non-test files
	docs    []string        // non-test files with a package doc comment
	files   int
}

func scan(t *testing.T) map[string]*pkgInfo {
	t.Helper()
	pkgs := map[string]*pkgInfo{}
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != "." && (strings.HasPrefix(name, ".") || name == "testdata" || name == "webgw-data") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			return err
		}
		dir := filepath.ToSlash(filepath.Dir(path))
		p := pkgs[dir]
		if p == nil {
			p = &pkgInfo{imports: map[string]bool{}}
			pkgs[dir] = p
		}
		p.files++
		if f.Doc != nil && strings.HasPrefix(strings.TrimSpace(f.Doc.Text()), "Package ") || f.Doc != nil && strings.HasPrefix(strings.TrimSpace(f.Doc.Text()), "Command ") {
			p.docs = append(p.docs, path)
		}
		for _, imp := range f.Imports {
			ip, _ := strconv.Unquote(imp.Path.Value)
			if rest, ok := strings.CutPrefix(ip, module+"/"); ok {
				p.imports[rest] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkgs
}

// TestLayering fails when a package imports one at its own level or above.
func TestLayering(t *testing.T) {
	for dir, p := range scan(t) {
		r, ok := rank[dir]
		if !ok {
			t.Errorf("package %s has no rank in layering_test.go: add it where it belongs", dir)
			continue
		}
		var imps []string
		for imp := range p.imports {
			imps = append(imps, imp)
		}
		sort.Strings(imps)
		for _, imp := range imps {
			ir, ok := rank[imp]
			if !ok {
				t.Errorf("%s imports %s, which has no rank", dir, imp)
				continue
			}
			if ir >= r {
				t.Errorf("%s (rank %d) imports %s (rank %d): dependencies must point down", dir, r, imp, ir)
			}
		}
	}
}

// TestPackageDocs checks that every package has exactly one package doc comment.
func TestPackageDocs(t *testing.T) {
	for dir, p := range scan(t) {
		if len(p.docs) != 1 {
			t.Errorf("package %s has %d package doc comments (%v); want exactly one", dir, len(p.docs), p.docs)
		}
	}
}
