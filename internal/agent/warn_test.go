package agent

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestWarnLimiter(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var w warnLimiter
	for range 5 {
		w.warn(log, "refused", "service", "x")
	}
	if n := strings.Count(buf.String(), "refused"); n != 1 {
		t.Fatalf("%d warnings logged, want 1:\n%s", n, buf.String())
	}
	// Once the period is over, the next warning says how many were left out.
	w.mu.Lock()
	w.last = w.last.Add(-warnEvery)
	w.mu.Unlock()
	w.warn(log, "refused", "service", "x")
	if !strings.Contains(buf.String(), "suppressed=4") {
		t.Errorf("second warning does not count the 4 left out:\n%s", buf.String())
	}
}
