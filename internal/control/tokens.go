package control

import (
	"sync"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/tunnel"
)

// maxKnownTokens bounds the tokens remembered; past it the memory starts over.
const maxKnownTokens = 10000

// knownTokens remembers which tenant each token that passed a store check
// belongs to (by the token's hash), so that while the store does not answer
// (etcd down) an agent reconnecting with a known token for its tenant's own
// services is still admitted. The zero value is ready to use.
type knownTokens struct {
	mu sync.Mutex
	m  map[string]string // token hash -> tenant; guarded by mu
}

func (k *knownTokens) put(token, tenant string) {
	h := model.HashToken(token)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil || len(k.m) >= maxKnownTokens {
		k.m = map[string]string{}
	}
	k.m[h] = tenant
}

func (k *knownTokens) get(token string) (string, bool) {
	h := model.HashToken(token)
	k.mu.Lock()
	defer k.mu.Unlock()
	t, ok := k.m[h]
	return t, ok
}

// ownsAll reports whether every service asked for is a stored service of
// tenant that this gateway knows: then admitting the agent needs no store
// write. A removed tenant's services are gone from the table, so a stale
// remembered token admits nothing.
func (s *Server) ownsAll(tenant string, specs []tunnel.ServiceSpec) bool {
	for _, sp := range specs {
		if sp.Name == "" {
			return false
		}
		svc := s.Table.Lookup(sp.Name)
		if svc == nil || !svc.Stored || svc.Tenant != tenant || string(svc.Protocol) != sp.Protocol {
			return false
		}
	}
	return len(specs) > 0
}
