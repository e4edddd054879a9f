package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sync"
)

// pprofEnv names the file where a webgw built with the hook writes the
// address of its pprof listener.
const pprofEnv = "WEBGW_BENCH_PPROF_ADDR_FILE"

// pprofHook is added to package main of cmd/webgw through `go build
// -overlay` when the harness runs with -pprof. The product has no profiling
// hook of its own; this keeps the source tree untouched.
const pprofHook = `package main

import (
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	file := os.Getenv("` + pprofEnv + `")
	if file == "" {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return
	}
	if os.WriteFile(file+".tmp", []byte(ln.Addr().String()), 0o600) == nil {
		os.Rename(file+".tmp", file)
	}
	go http.Serve(ln, nil)
}
`

// writePprofOverlay writes the hook and an overlay file that adds it to
// root/cmd/webgw, and returns the overlay file.
func writePprofOverlay(dir, root string) (string, error) {
	src := filepath.Join(dir, "bench_pprof_hook.go")
	if err := os.WriteFile(src, []byte(pprofHook), 0o600); err != nil {
		return "", err
	}
	ov := struct{ Replace map[string]string }{Replace: map[string]string{
		filepath.Join(root, "cmd", "webgw", "zz_bench_pprof_hook.go"): src,
	}}
	b, err := json.Marshal(ov)
	if err != nil {
		return "", err
	}
	file := filepath.Join(dir, "overlay.json")
	return file, os.WriteFile(file, b, 0o600)
}

// startCPUProfiles starts CPU profiles of the gateway and the agent for the
// measured window; the func it returns waits for them and saves them.
func (h *harness) startCPUProfiles(ctx context.Context, s *stack) func() {
	secs := max(1, int(math.Round(h.cfg.Duration.Seconds())))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h.saveProfiles(ctx, s, "cpu", fmt.Sprintf("profile?seconds=%d", secs))
	}()
	return wg.Wait
}

// saveProfiles fetches /debug/pprof/<query> from gateway and agent into
// PprofDir/<process>-<kind>.pprof (kind "x.txt": <process>-x.txt).
// Failures are reported, not fatal.
func (h *harness) saveProfiles(ctx context.Context, s *stack, kind, query string) {
	var wg sync.WaitGroup
	for _, p := range []*proc{s.gateway, s.agent} {
		addr := s.pprofAddr[p]
		if addr == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			file := filepath.Join(h.cfg.PprofDir, p.name+"-"+kind)
			if filepath.Ext(kind) == "" {
				file += ".pprof"
			}
			if err := fetchTo(ctx, "http://"+addr+"/debug/pprof/"+query, file); err != nil {
				h.logf("pprof %s %s: %v", p.name, kind, err)
				return
			}
			h.logf("pprof %s %s profile written to %s (go tool pprof -top %s)", p.name, kind, file, file)
		}()
	}
	wg.Wait()
}

func fetchTo(ctx context.Context, url, file string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
