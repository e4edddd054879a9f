package gateway

import (
	"context"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"

	"github.com/webgw/webgw/internal/certs"
	"github.com/webgw/webgw/internal/store"
)

// challengeView is the live set of ACME DNS-01 challenge records in the
// store, which the DNS server answers (every gateway of a cluster, whoever
// asked for the certificate).
type challengeView struct {
	mu   sync.RWMutex
	byNm map[string]map[string]string // name -> store key -> TXT value; guarded by mu
}

// lookup returns the TXT values of name.
func (v *challengeView) lookup(name string) []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	var out []string
	for _, val := range v.byNm[name] {
		out = append(out, val)
	}
	return out
}

func (v *challengeView) put(key, val string) {
	name := certs.ChallengeName(key)
	if name == "" {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.byNm == nil {
		v.byNm = map[string]map[string]string{}
	}
	if v.byNm[name] == nil {
		v.byNm[name] = map[string]string{}
	}
	v.byNm[name][key] = val
}

func (v *challengeView) del(key string) {
	name := certs.ChallengeName(key)
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.byNm[name], key)
	if len(v.byNm[name]) == 0 {
		delete(v.byNm, name)
	}
}

// watch keeps the view in step with the store until ctx ends.
func (v *challengeView) watch(ctx context.Context, st store.Store, log *slog.Logger) {
	follow(ctx, st, certs.ChallengePrefix, log, func() {
		entries, err := st.List(ctx, certs.ChallengePrefix)
		if err != nil {
			log.Error("list acme challenges", "err", err)
			return
		}
		v.mu.Lock()
		v.byNm = nil
		v.mu.Unlock()
		for _, e := range entries {
			v.put(e.Key, string(e.Value))
		}
	}, func(ev store.Event) {
		if ev.Type == store.EventDelete {
			v.del(ev.Entry.Key)
		} else {
			v.put(ev.Entry.Key, string(ev.Entry.Value))
		}
	})
}

// caaIssuer is the domain the gateway domain's CAA records name: acme_caa,
// else the ACME CA URL host's last two labels; "" for an IP address.
func caaIssuer(cfg *Config) string {
	if cfg.ACMECAA != "" {
		return cfg.ACMECAA
	}
	u, err := url.Parse(cfg.ACMECA)
	if err != nil {
		return ""
	}
	host := u.Hostname()
	if net.ParseIP(host) != nil || host == "localhost" {
		return ""
	}
	labels := strings.Split(strings.TrimSuffix(host, "."), ".")
	if len(labels) > 2 {
		labels = labels[len(labels)-2:]
	}
	return strings.Join(labels, ".")
}
