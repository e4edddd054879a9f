package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// New-upstream figures (Report.Scenarios["new_upstream"]):
//
//	cli_from_start_ms, cli_from_return_ms   `webgw service set up --add-upstream B`: from the
//	                                        command's start, and from its exit, to the arrival
//	                                        of the first request at backend b
//	cli_call_ms                             how long the command ran
//	api_from_start_ms, api_from_return_ms   PUT /v1/services/up adding backend c: from sending
//	                                        the PUT, and from its answer, to the first request
//	                                        at c (negative: c was served before the answer)
//	api_call_ms                             how long the PUT took
//	failed                                  requests that failed in the whole run
//	requests                                answers in the whole run
//
// Arrival is the backend's own clock (backendRecvHeader, wall time of the
// same machine).

// newUpstream runs the new-upstream scenario once: a service with one direct
// upstream (backend a) under steady load gets backend b through the CLI and
// then backend c through the API.
func (h *harness) newUpstream(ctx context.Context, dir string) (Figures, error) {
	var stops []*proc
	defer func() {
		for _, p := range stops {
			p.stop()
		}
	}()
	bs := map[string]*backend{}
	for _, id := range []string{"a", "b", "c"} {
		b, err := h.startTaggedBackend(ctx, dir, id)
		if err != nil {
			return nil, err
		}
		stops = append(stops, b.proc)
		bs[id] = b
	}
	g, err := h.startGateway(ctx, dir, "gateway", nil, "--upstream-allow", "127.0.0.1/32")
	if err != nil {
		return nil, err
	}
	stops = append(stops, g.proc)
	if _, err := h.cli(ctx, g, "tenant", "add", "bench"); err != nil {
		return nil, err
	}
	out, err := h.cli(ctx, g, "service", "add", "up", "--tenant", "bench", "--upstream", "http://"+bs["a"].httpAddr)
	if err != nil {
		return nil, err
	}
	public, err := url.Parse(strings.TrimSpace(out))
	if err != nil || public.Scheme != "https" {
		return nil, fmt.Errorf("service add printed %q, want the service URL", out)
	}
	t := g.publicTarget("new_upstream", public)
	if err := waitOK(ctx, t, 10*time.Second); err != nil {
		return nil, err
	}
	admin, err := g.adminToken()
	if err != nil {
		return nil, err
	}

	l := startSteadyLoad(ctx, t, h.cfg.ScenarioConns, "a", "b", "c")
	defer l.stop()
	if err := waitFor(ctx, 10*time.Second, "backend a to serve", func() bool { return l.count("a") > 20 }); err != nil {
		return nil, err
	}
	sleep(ctx, h.cfg.Warmup)

	f := Figures{"failed": 0}
	// b through the CLI.
	cliStart := time.Now()
	if _, err := h.cli(ctx, g, "service", "set", "up", "--add-upstream", "http://"+bs["b"].httpAddr); err != nil {
		return nil, err
	}
	cliEnd := time.Now()
	if err := waitFor(ctx, 5*time.Second, "backend b to get a request", func() bool { return l.count("b") > 0 }); err != nil {
		return nil, err
	}
	sleep(ctx, h.cfg.Warmup)

	// c through the API: read the service, append c, PUT it back.
	apiStart, apiEnd, err := addUpstreamAPI(ctx, g.apiAddr, admin, "up", "http://"+bs["c"].httpAddr)
	if err != nil {
		return nil, err
	}
	if err := waitFor(ctx, 5*time.Second, "backend c to get a request", func() bool { return l.count("c") > 0 }); err != nil {
		return nil, err
	}
	sleep(ctx, 100*time.Millisecond)
	evs := l.stop()
	logFailures(h, "new upstream", evs)

	first := map[string]int64{}
	for _, e := range evs {
		switch {
		case !e.ok:
			f["failed"]++
		default:
			f["requests"]++
			if v, ok := first[e.backend]; e.recv != 0 && (!ok || e.recv < v) {
				first[e.backend] = e.recv
			}
		}
	}
	since := func(id string, t time.Time) float64 { return float64(first[id]-t.UnixNano()) / 1e6 }
	f["cli_from_start_ms"] = since("b", cliStart)
	f["cli_from_return_ms"] = since("b", cliEnd)
	f["cli_call_ms"] = ms(cliEnd.Sub(cliStart))
	f["api_from_start_ms"] = since("c", apiStart)
	f["api_from_return_ms"] = since("c", apiEnd)
	f["api_call_ms"] = ms(apiEnd.Sub(apiStart))
	return f, nil
}

// addUpstreamAPI adds upstream to service name through the admin API: GET
// the service (outside the timing), then PUT it with If-Match. It returns
// when the PUT was sent and when its answer was read.
func addUpstreamAPI(ctx context.Context, apiAddr, token, name, upstream string) (start, end time.Time, err error) {
	base := "http://" + apiAddr + "/v1/services/" + name
	do := func(method string, body []byte, etag string) (*http.Response, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, method, base, bytes.NewReader(body))
		if err != nil {
			return nil, nil, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if etag != "" {
			req.Header.Set("If-Match", etag)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, nil, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s %s: %s: %s", method, base, resp.Status, bytes.TrimSpace(b))
		}
		return resp, b, err
	}
	resp, b, err := do("GET", nil, "")
	if err != nil {
		return start, end, err
	}
	var sv map[string]json.RawMessage
	if err := json.Unmarshal(b, &sv); err != nil {
		return start, end, fmt.Errorf("GET %s: %w", base, err)
	}
	// The request schema (ServiceRequest) takes these keys only.
	put := map[string]any{}
	for _, k := range []string{"name", "tenant", "protocol", "lb", "health", "passive"} {
		if v, ok := sv[k]; ok {
			put[k] = v
		}
	}
	var ups []map[string]any
	if v, ok := sv["upstreams"]; ok {
		if err := json.Unmarshal(v, &ups); err != nil {
			return start, end, fmt.Errorf("GET %s: upstreams: %w", base, err)
		}
	}
	put["upstreams"] = append(ups, map[string]any{"url": upstream})
	body, err := json.Marshal(put)
	if err != nil {
		return start, end, err
	}
	start = time.Now()
	_, _, err = do("PUT", body, resp.Header.Get("ETag"))
	end = time.Now()
	return start, end, err
}
