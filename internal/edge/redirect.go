package edge

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/proxy"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// Redirect serves the plain HTTP port: known names are sent to HTTPS with a
// 308 (method and body kept), everything else gets a 404 page. ACME HTTP-01
// challenges for a TLS-passthrough service go to its agent instead, so a
// backend that holds its own certificate can get one through the gateway.
type Redirect struct {
	Names *Names
	// HTTPSPort is the public HTTPS port; "443" or "" leaves it out of URLs.
	HTTPSPort string
	// Challenge answers the gateway's own ACME HTTP-01 challenges and
	// reports whether the request was one; nil means none are.
	Challenge func(w http.ResponseWriter, r *http.Request) bool

	once      sync.Once
	challenge *httputil.ReverseProxy // made once
}

// acmeChallengePrefix is where ACME HTTP-01 challenges are asked (RFC 8555 8.3).
const acmeChallengePrefix = "/.well-known/acme-challenge/"

func (rd *Redirect) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rd.Challenge != nil && strings.HasPrefix(r.URL.Path, acmeChallengePrefix) && rd.Challenge(w, r) {
		return
	}
	host := proxy.HostName(r.Host)
	label, ours, svc := rd.Names.Resolve(host)
	if !ours || (label != "" && svc == nil) {
		proxy.ErrorPage(w, http.StatusNotFound, "No service is registered under the name "+host+".")
		return
	}
	if svc != nil && svc.Protocol == model.ProtoTLS && strings.HasPrefix(r.URL.Path, acmeChallengePrefix) &&
		(r.Method == http.MethodGet || r.Method == http.MethodHead) {
		rd.forwardChallenge(w, r, svc, host)
		return
	}
	target := host
	if rd.HTTPSPort != "" && rd.HTTPSPort != "443" {
		target = net.JoinHostPort(host, rd.HTTPSPort)
	}
	http.Redirect(w, r, "https://"+target+r.URL.RequestURI(), http.StatusPermanentRedirect)
}

type challengeKey struct{}

// challengeTarget is what forwardChallenge's transport dials.
type challengeTarget struct {
	svc      *route.Service
	host     string
	clientIP string
	client   string
}

// forwardChallenge relays an ACME HTTP-01 challenge request to the agent
// of the passthrough service svc (a kind http stream, which the agent
// serves from the backend's challenge port, spec.md 5.2).
func (rd *Redirect) forwardChallenge(w http.ResponseWriter, r *http.Request, svc *route.Service, host string) {
	rd.once.Do(func() {
		rd.challenge = &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.Out.URL.Scheme = "http"
				pr.Out.URL.Host = pr.In.Host
				pr.Out.Host = pr.In.Host
				pr.SetXForwarded()
			},
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					t := ctx.Value(challengeKey{}).(*challengeTarget)
					c, _, err := t.svc.DialContext(ctx, &tunnel.Header{Kind: tunnel.KindHTTP, Service: t.svc.Name, Client: t.client, Host: t.host}, t.clientIP)
					return c, err
				},
				DisableKeepAlives:      true,
				ResponseHeaderTimeout:  10 * time.Second,
				MaxResponseHeaderBytes: 16 << 10,
			},
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				proxy.ErrorPage(w, http.StatusBadGateway, "The service's backend did not answer the ACME challenge.")
			},
		}
	})
	client := r.RemoteAddr
	ip, _, _ := net.SplitHostPort(client)
	ctx := context.WithValue(r.Context(), challengeKey{}, &challengeTarget{svc: svc, host: host, clientIP: ip, client: client})
	rd.challenge.ServeHTTP(w, r.WithContext(ctx))
}
