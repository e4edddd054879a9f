package control_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/webgw/webgw/internal/control"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

// flakyStore fails every call with ErrUnavailable while down is set, as
// the etcd store does when etcd does not answer.
type flakyStore struct {
	store.Store
	down atomic.Bool
}

func (f *flakyStore) err() error {
	return fmt.Errorf("etcd at test did not answer: %w", store.ErrUnavailable)
}
func (f *flakyStore) Get(ctx context.Context, k string) (store.Entry, error) {
	if f.down.Load() {
		return store.Entry{}, f.err()
	}
	return f.Store.Get(ctx, k)
}
func (f *flakyStore) List(ctx context.Context, p string) ([]store.Entry, error) {
	if f.down.Load() {
		return nil, f.err()
	}
	return f.Store.List(ctx, p)
}
func (f *flakyStore) Put(ctx context.Context, k string, v []byte, e int64) (int64, error) {
	if f.down.Load() {
		return 0, f.err()
	}
	return f.Store.Put(ctx, k, v, e)
}

// TestReconnectWhileStoreDown: while the store does not answer, an agent
// whose token was checked before reconnects for its tenant's own services;
// an unknown token, or a service the gateway does not know as the tenant's,
// gets a transient refusal (retry later), not a permanent one.
func TestReconnectWhileStoreDown(t *testing.T) {
	var fs *flakyStore
	h := newHarness(t, func(s *control.Server) {
		fs = &flakyStore{Store: s.Store}
		s.Store = fs
	})
	tokA := h.addTenant(t, "alpha")
	tokB := h.addTenant(t, "beta")
	a1 := h.connect(t, hello("a1", tokA, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, a1)
	a1.sess.Close()
	a1.waitDone(t)

	fs.down.Store(true)
	a2 := h.connect(t, hello("a2", tokA, spec("shop", model.ProtoHTTP)))
	wantAdmitted(t, a2)
	wantAgents(t, h, "shop", 1)

	b := h.connect(t, hello("b1", tokB, spec("cart", model.ProtoHTTP)))
	wantRefused(t, b, false, "try again")
	a3 := h.connect(t, hello("a3", tokA, spec("newname", model.ProtoHTTP)))
	wantRefused(t, a3, false, "try again")
}

// TestQuickNameHeldElsewhere: a quick-tunnel name another gateway of the
// cluster serves goes only to the agent process serving it there (which
// tells each gateway its id with another suffix), never to another
// anonymous agent nor to a tenant.
func TestQuickNameHeldElsewhere(t *testing.T) {
	h := newHarness(t, func(s *control.Server) {
		s.QuickElsewhere = func(name, agentID string) (bool, bool) {
			if name != "brave-otter-42" {
				return false, false
			}
			base, _, _ := strings.Cut(agentID, "-")
			return true, base == "a1b2"
		}
	})
	tok := h.addTenant(t, "alpha")
	other := h.connect(t, hello("ffff", "", spec("brave-otter-42", model.ProtoHTTP)))
	wantRefused(t, other, false, "in use by another quick tunnel")
	ten := h.connect(t, hello("eeee", tok, spec("brave-otter-42", model.ProtoHTTP)))
	wantRefused(t, ten, false, "in use by a quick tunnel")
	same := h.connect(t, hello("a1b2-g1", "", spec("brave-otter-42", model.ProtoHTTP)))
	wantAdmitted(t, same)
	wantAgents(t, h, "brave-otter-42", 1)
}
