// Package yggtest builds the stock Yggdrasil node for tests: the
// cmd/yggdrasil of the yggdrasil-go version in go.mod, so tests check that
// webgw's embedded node speaks with the real thing.
package yggtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

var (
	stockOnce sync.Once
	stockBin  string
	stockErr  string
)

// Stock builds the stock cmd/yggdrasil of the module version in go.mod
// once per machine (cached under the temp dir; several test packages may
// build it at once) and returns its path. It is built from a copy of the
// module with suah.dev/protect (OpenBSD pledge, absent from the module
// proxy here) replaced by a no-op stub. Run it from inside the module.
func Stock() (string, error) {
	stockOnce.Do(func() {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}} {{.Dir}}", "github.com/yggdrasil-network/yggdrasil-go").Output()
		if err != nil {
			stockErr = "go list: " + err.Error()
			return
		}
		version, dir, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
		bin := filepath.Join(os.TempDir(), "webgw-test-yggdrasil-"+version, "yggdrasil")
		if _, err := os.Stat(bin); err == nil {
			stockBin = bin
			return
		}
		src, err := os.MkdirTemp("", "yggdrasil-src-")
		if err != nil {
			stockErr = err.Error()
			return
		}
		defer os.RemoveAll(src)
		steps := [][]string{
			{"cp", "-r", dir + "/.", src},
			{"chmod", "-R", "u+w", src},
		}
		for _, s := range steps {
			if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
				stockErr = strings.Join(s, " ") + ": " + err.Error() + ": " + string(out)
				return
			}
		}
		stub := filepath.Join(src, "protectstub")
		files := map[string]string{
			filepath.Join(stub, "go.mod"):     "module suah.dev/protect\n\ngo 1.21\n",
			filepath.Join(stub, "protect.go"): "package protect\n\nfunc Pledge(string) error { return nil }\n\nfunc Unveil(string, string) error { return nil }\n\nfunc UnveilBlock() error { return nil }\n",
		}
		_ = os.Mkdir(stub, 0o755)
		for p, c := range files {
			if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
				stockErr = err.Error()
				return
			}
		}
		gomod, _ := os.ReadFile(filepath.Join(src, "go.mod"))
		gomod = append(gomod, "\nreplace suah.dev/protect => ./protectstub\n"...)
		if err := os.WriteFile(filepath.Join(src, "go.mod"), gomod, 0o644); err != nil {
			stockErr = err.Error()
			return
		}
		tmp := fmt.Sprintf("%s.%d.tmp", bin, os.Getpid()) // packages build it in parallel
		cmd := exec.Command("go", "build", "-o", tmp, "./cmd/yggdrasil")
		cmd.Dir = src
		if out, err := cmd.CombinedOutput(); err != nil {
			stockErr = "go build cmd/yggdrasil " + version + ": " + err.Error() + "\n" + string(out)
			return
		}
		if err := os.Rename(tmp, bin); err != nil {
			stockErr = err.Error()
			return
		}
		stockBin = bin
	})
	if stockBin == "" {
		return "", fmt.Errorf("build the stock yggdrasil: %s", stockErr)
	}
	return stockBin, nil
}
