package route

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/proxyproto"
	"github.com/webgw/webgw/internal/tunnel"
)

// runChecks checks every upstream of s each interval until ctx ends.
func (t *Table) runChecks(ctx context.Context, s *Service, p HealthPolicy) {
	tick := time.NewTicker(p.Interval)
	defer tick.Stop()
	for {
		var wg sync.WaitGroup
		for _, u := range s.list().all {
			// A peer gateway tells the cluster it holds the service only
			// while its own checks pass.
			if u.Gone() || u.Peer() {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(ctx, p.Timeout)
				err := t.Check(cctx, s, u, &p)
				cancel()
				if ctx.Err() != nil {
					return
				}
				if u.Health.CheckResult(&p, err == nil) {
					if err != nil {
						t.log().Warn("upstream unhealthy", "service", s.Name, "upstream", u.String(), "err", err)
					} else {
						t.log().Info("upstream healthy again", "service", s.Name, "upstream", u.String())
					}
				}
			}()
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Check runs one active health check of u by p: a TCP connect (through an
// agent: a probe stream, whose agent dials its local target) or an HTTP GET.
// It returns nil when the check passes.
func (t *Table) Check(ctx context.Context, s *Service, u *Upstream, p *HealthPolicy) error {
	kind := tunnel.KindHTTP
	httpCheck := p.Type != "tcp" && s.Protocol.Terminates()
	switch {
	case !httpCheck:
		kind = tunnel.KindProbe
	case s.Protocol == model.ProtoH2C:
		kind = tunnel.KindH2C
	}
	c, err := u.Dial(ctx, &tunnel.Header{Kind: kind, Service: s.Name})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if pp := s.ProxyProtocol(); httpCheck && (pp == 1 || pp == 2) {
		// The backend expects a PROXY header first; a check is the
		// gateway's own connection.
		h, err := proxyproto.LocalHeader(proxyproto.Version(pp))
		if err != nil {
			return err
		}
		if _, err := c.Write(h); err != nil {
			return fmt.Errorf("send proxy header: %w", err)
		}
	}
	if !httpCheck {
		if u.Direct != nil {
			return nil // connected
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		if b[0] != tunnel.ProbeOK {
			return fmt.Errorf("the agent could not reach its local target")
		}
		return nil
	}
	host := s.Name
	if t.Domain != "" {
		host += "." + t.Domain
	}
	code, err := httpProbe(ctx, c, s.Protocol == model.ProtoH2C, host, p.Path)
	if err != nil {
		return err
	}
	if !p.StatusOK(code) {
		want := "200-399"
		if p.Status != 0 {
			want = fmt.Sprint(p.Status)
		}
		return fmt.Errorf("GET %s answered %d, want %s", p.Path, code, want)
	}
	return nil
}

// httpProbe sends one GET over c and returns the answer's status.
func httpProbe(ctx context.Context, c net.Conn, h2c bool, host, path string) (int, error) {
	if !h2c {
		req := "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: webgw-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
		if _, err := io.WriteString(c, req); err != nil {
			return 0, fmt.Errorf("send check: %w", err)
		}
		resp, err := http.ReadResponse(bufio.NewReaderSize(c, 4<<10), nil)
		if err != nil {
			return 0, fmt.Errorf("read check answer: %w", err)
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	used := false
	tr := &http.Transport{
		Protocols: &protos,
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			if used {
				return nil, fmt.Errorf("health check connection already used")
			}
			used = true
			return c, nil
		},
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("User-Agent", "webgw-health-check")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, fmt.Errorf("check: %w", err)
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
