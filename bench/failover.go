package main

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Failover figures (Report.Scenarios["failover_<transport>"]):
//
//	failed_get, failed_post     requests that failed, from the kill to the end
//	last_fail_ms                kill -> the end of the last failed request; 0 if none failed
//	takeover_ms                 kill -> the first moment t, at or after the last failure,
//	                            such that the 100 ms from t on have 90% of the answers of
//	                            100 ms before the kill (1 ms steps): throughput is back
//	                            from t on
//	slowest_ms                  the slowest request that ended after the kill
//	rps_before, rps_after       answers/s in the second before the kill; in the second half
//	                            of the observation after it
//	observed_ms                 how long the run went on after the kill: -duration (at least
//	                            1 s), longer while requests failed or the rate was not back
//	window_min_pct_before       the lowest of the ten 100 ms windows before the kill, in
//	                            % of their mean: the noise takeover_ms is judged against
//	requests                    answers in the whole run
const (
	failoverPre    = time.Second            // the window before the kill that sets the rate to get back to
	failoverWindow = 100 * time.Millisecond // throughput is counted over windows this long
	failoverBack   = 0.9                    // "back to before": this share of the rate before the kill
	// defaultFailoverWatch is how long after the kill a run may go on
	// while requests fail or throughput is not back (Config.FailoverWatch).
	defaultFailoverWatch = 60 * time.Second
)

// failover runs the failover scenario once over transport: two agents
// (--connections 2 each) expose the service shop, each for its own backend
// (a and b); under steady load agent a is killed with SIGKILL.
func (h *harness) failover(ctx context.Context, dir, transport string) (Figures, error) {
	var stops []*proc
	defer func() {
		for _, p := range stops {
			p.stop()
		}
	}()
	ba, err := h.startTaggedBackend(ctx, dir, "a")
	if err != nil {
		return nil, err
	}
	stops = append(stops, ba.proc)
	bb, err := h.startTaggedBackend(ctx, dir, "b")
	if err != nil {
		return nil, err
	}
	stops = append(stops, bb.proc)
	g, err := h.startGateway(ctx, dir, "gateway", nil)
	if err != nil {
		return nil, err
	}
	stops = append(stops, g.proc)
	out, err := h.cli(ctx, g, "tenant", "add", "bench")
	if err != nil {
		return nil, err
	}
	token := strings.TrimSpace(out)
	var agents [2]*proc
	var public *url.URL
	for i, b := range []*backend{ba, bb} {
		p, u, err := h.startAgent(ctx, dir, "agent-"+string(rune('a'+i)), g, nil,
			"--token", token, "--name", "shop", "--connections", "2", "--transport", transport, "http://"+b.httpAddr)
		if err != nil {
			return nil, err
		}
		stops = append(stops, p)
		agents[i] = p
		public = u
	}
	t := g.publicTarget("failover", public)
	if err := waitOK(ctx, t, 10*time.Second); err != nil {
		return nil, err
	}

	l := startSteadyLoad(ctx, t, h.cfg.ScenarioConns, "a", "b")
	err = waitFor(ctx, 15*time.Second, "both agents to serve", func() bool { return l.count("a") > 20 && l.count("b") > 20 })
	if err != nil {
		l.stop()
		return nil, fmt.Errorf("%w (answers from a %d, b %d)", err, l.count("a"), l.count("b"))
	}
	sleep(ctx, h.cfg.Warmup)
	ok0 := l.ok()
	sleep(ctx, failoverPre)
	preRate := float64(l.ok()-ok0) / failoverPre.Seconds()
	killAt := l.at(time.Now())
	if err := agents[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		l.stop()
		return nil, fmt.Errorf("kill agent a: %w", err)
	}
	// Watch for -duration (at least 1 s), and on while requests fail or
	// the rate is not back (a transport that cannot see the dead agent at
	// once), up to FailoverWatch.
	sleep(ctx, min(max(h.cfg.Duration, time.Second), h.cfg.FailoverWatch))
	for ctx.Err() == nil && l.at(time.Now())-killAt < h.cfg.FailoverWatch {
		ok1, failed1 := l.ok(), l.failed()
		sleep(ctx, 500*time.Millisecond)
		if l.failed() == failed1 && float64(l.ok()-ok1)/0.5 >= failoverBack*preRate {
			break
		}
	}
	observe := l.at(time.Now()) - killAt
	evs := l.stop()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	logFailures(h, "failover "+transport, evs)
	return failoverFigures(evs, killAt, observe), nil
}

// logFailures writes the first failures of each method to the progress log.
func logFailures(h *harness, what string, evs []reqEvent) {
	shown := map[bool]int{}
	for _, e := range evs {
		if !e.ok && shown[e.post] < 3 {
			shown[e.post]++
			m := "GET"
			if e.post {
				m = "POST"
			}
			h.logf("%s: %s failed at %.1f ms (started %.1f ms): %s", what, m, ms(e.end), ms(e.start), e.err)
		}
	}
}

// failoverFigures reads the figures above from the requests of one run.
func failoverFigures(evs []reqEvent, kill, observe time.Duration) Figures {
	f := Figures{"failed_get": 0, "failed_post": 0, "last_fail_ms": 0, "slowest_ms": 0}
	var lastFail time.Duration
	var okBefore int
	for _, e := range evs {
		switch {
		case !e.ok && e.end >= kill:
			if e.post {
				f["failed_post"]++
			} else {
				f["failed_get"]++
			}
			lastFail = max(lastFail, e.end-kill)
		case e.ok:
			f["requests"]++
			if e.end >= kill-failoverPre && e.end < kill {
				okBefore++
			}
		}
		if e.end >= kill {
			f["slowest_ms"] = max(f["slowest_ms"], ms(e.end-e.start))
		}
	}
	f["last_fail_ms"] = ms(lastFail)
	rate := float64(okBefore) / failoverPre.Seconds()
	f["rps_before"] = rate

	// Answers per failoverWindow, starting at each ms from the kill on.
	var okEnds []time.Duration
	for _, e := range evs {
		if e.ok {
			okEnds = append(okEnds, e.end) // evs are ordered by end
		}
	}
	inWindow := func(from time.Duration) float64 {
		i, _ := slices.BinarySearch(okEnds, from)
		j, _ := slices.BinarySearch(okEnds, from+failoverWindow)
		return float64(j - i)
	}
	perWindow := rate * failoverWindow.Seconds()
	minPct := 100.0
	for from := kill - failoverPre; from+failoverWindow <= kill; from += failoverWindow {
		minPct = min(minPct, inWindow(from)*100/max(perWindow, 1))
	}
	f["window_min_pct_before"] = minPct
	f["takeover_ms"] = ms(observe) // not back within the observation
	for from := lastFail; from+failoverWindow <= observe; from += time.Millisecond {
		if inWindow(kill+from) >= failoverBack*perWindow {
			f["takeover_ms"] = ms(from)
			break
		}
	}
	half := observe / 2
	var okAfter int
	for _, e := range evs {
		if e.ok && e.end >= kill+half && e.end < kill+observe {
			okAfter++
		}
	}
	f["rps_after"] = float64(okAfter) / (observe - half).Seconds()
	f["observed_ms"] = ms(observe)
	return f
}

// scenarioDir is a fresh directory for one scenario run.
func scenarioDir(work, name string, round int) string {
	return filepath.Join(work, fmt.Sprintf("%s-%d", name, round+1))
}
