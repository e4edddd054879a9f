package route

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/webgw/webgw/internal/model"
)

// HealthPolicy is a service's health settings with defaults applied.
type HealthPolicy struct {
	// Active is set when active checks run.
	Active             bool
	Type               string // "http" or "tcp"
	Path               string
	Status             int // 0: any of 200-399
	Interval, Timeout  time.Duration
	HealthyThreshold   int
	UnhealthyThreshold int
	// MaxFailures is the consecutive failed requests that eject an upstream; 0 turns ejection off.
	MaxFailures int
	Cooldown    time.Duration
	Count5xx    bool
}

// PolicyFor applies the defaults to a service's stored health settings.
func PolicyFor(h *model.HealthCheck, p *model.PassiveHealth) HealthPolicy {
	hp := HealthPolicy{
		MaxFailures: model.DefaultMaxFailures, Cooldown: model.DefaultCooldown, Count5xx: true,
		HealthyThreshold: model.DefaultHealthyThreshold, UnhealthyThreshold: model.DefaultUnhealthyThreshold,
		Interval: model.DefaultHealthInterval, Timeout: model.DefaultHealthTimeout, Type: "http", Path: "/",
	}
	if h != nil {
		hp.Active = true
		if h.Type != "" {
			hp.Type = h.Type
		}
		if h.Path != "" {
			hp.Path = h.Path
		}
		hp.Status = h.Status
		if h.Interval != 0 {
			hp.Interval = h.Interval.Std()
		}
		if h.Timeout != 0 {
			hp.Timeout = h.Timeout.Std()
		}
		if h.HealthyThreshold != 0 {
			hp.HealthyThreshold = h.HealthyThreshold
		}
		if h.UnhealthyThreshold != 0 {
			hp.UnhealthyThreshold = h.UnhealthyThreshold
		}
	}
	if p != nil {
		switch {
		case p.MaxFailures < 0:
			hp.MaxFailures = 0
		case p.MaxFailures > 0:
			hp.MaxFailures = p.MaxFailures
		}
		if p.Cooldown != 0 {
			hp.Cooldown = p.Cooldown.Std()
		}
		hp.Count5xx = !p.Ignore5xx
	}
	return hp
}

// StatusOK reports whether an HTTP check's status passes.
func (p *HealthPolicy) StatusOK(code int) bool {
	if p.Status != 0 {
		return code == p.Status
	}
	return code >= 200 && code < 400
}

// Health is one upstream's health state: the verdict of active checks
// (consecutive passes and failures against thresholds) and passive ejection
// (consecutive failed requests eject it for a cool-down that grows while it
// keeps failing). Time is passed in, so tests drive it with a fake clock.
// The request path reads it lock-free through Usable.
type Health struct {
	mu        sync.Mutex
	passes    int  // consecutive active passes while down; guarded by mu
	fails     int  // consecutive active failures while up; guarded by mu
	reqFails  int  // consecutive failed requests; guarded by mu
	ejections int  // ejections in a row without a success in between; guarded by mu
	probation bool // the ejection just ended: one more failure ejects again; guarded by mu

	down         atomic.Bool  // active checks say unhealthy
	ejectedUntil atomic.Int64 // unix nanos; 0 when not ejected
	// failing is set while any passive state is not clean, so the request
	// path records successes without taking mu.
	failing atomic.Bool
}

// Usable reports whether the upstream may get new traffic at now.
func (h *Health) Usable(now time.Time) bool {
	if h.down.Load() {
		return false
	}
	if until := h.ejectedUntil.Load(); until != 0 && now.UnixNano() < until {
		return false
	}
	return true
}

// State names the health for status output: "healthy", "unhealthy" (active
// checks), or "ejected" (passive).
func (h *Health) State(now time.Time) string {
	switch {
	case h.down.Load():
		return "unhealthy"
	case h.ejectedUntil.Load() != 0 && now.UnixNano() < h.ejectedUntil.Load():
		return "ejected"
	}
	return "healthy"
}

// resetActive forgets the active checks' verdict (they were turned off).
func (h *Health) resetActive() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.passes, h.fails = 0, 0
	h.down.Store(false)
}

// CheckResult records one active check. It reports whether the verdict changed.
func (h *Health) CheckResult(p *HealthPolicy, ok bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down.Load() {
		h.fails = 0
		if !ok {
			h.passes = 0
			return false
		}
		h.passes++
		if h.passes >= max(p.HealthyThreshold, 1) {
			h.passes = 0
			h.down.Store(false)
			// A check that passes clears a passive ejection too.
			h.ejectedUntil.Store(0)
			h.reqFails, h.ejections, h.probation = 0, 0, false
			h.failing.Store(false)
			return true
		}
		return false
	}
	h.passes = 0
	if ok {
		h.fails = 0
		return false
	}
	h.fails++
	if h.fails >= max(p.UnhealthyThreshold, 1) {
		h.fails = 0
		h.down.Store(true)
		return true
	}
	return false
}

// maxEjectionFactor caps how far the cool-down grows for an upstream that
// keeps failing after each ejection.
const maxEjectionFactor = 10

// RequestResult records the outcome of one request (or dial) at now. It
// reports whether the upstream was just ejected.
func (h *Health) RequestResult(p *HealthPolicy, ok bool, now time.Time) bool {
	return h.requestResult(p, ok, now, nil)
}

// requestResult is RequestResult where may, when not nil, is asked before
// an ejection: false keeps the upstream in (the failures stay counted, so
// the next one asks again).
func (h *Health) requestResult(p *HealthPolicy, ok bool, now time.Time, may func() bool) bool {
	if p.MaxFailures <= 0 || (ok && !h.failing.Load()) {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	until := h.ejectedUntil.Load()
	if ok {
		if until != 0 && now.UnixNano() < until {
			return false // an answer to a request sent before the ejection
		}
		h.reqFails, h.ejections, h.probation = 0, 0, false
		h.ejectedUntil.Store(0)
		h.failing.Store(false)
		return false
	}
	h.failing.Store(true)
	if until != 0 && now.UnixNano() < until {
		return false // already out: requests that were in flight
	}
	if until != 0 {
		// The cool-down has passed: the upstream is on probation.
		h.ejectedUntil.Store(0)
		h.probation = true
	}
	h.reqFails++
	if (h.reqFails >= p.MaxFailures || h.probation) && (may == nil || may()) {
		h.reqFails = 0
		h.probation = false
		h.ejections++
		d := p.Cooldown * time.Duration(min(h.ejections, maxEjectionFactor))
		h.ejectedUntil.Store(now.Add(d).UnixNano())
		return true
	}
	return false
}
