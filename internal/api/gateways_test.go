package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/cluster"
	"github.com/webgw/webgw/internal/store"
)

// TestGateways: GET /v1/gateways lists the members, marks this one, and
// is for the admin only.
func TestGateways(t *testing.T) {
	e := newEnv(t)
	if code, _, _ := e.do(t, "GET", "/v1/gateways", adminToken, nil); code != http.StatusServiceUnavailable {
		t.Errorf("without a member list: %d, want 503", code)
	}
	started := time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)
	e.srv.Members = func() []cluster.Member {
		return []cluster.Member{
			{ID: "gw1", Addrs: []string{"192.0.2.1"}, Tunnel: "192.0.2.1:443", Started: started},
			{ID: "gw2", Addrs: []string{"192.0.2.2", "2001:db8::2"}, Tunnel: "192.0.2.2:443", Region: "eu", Started: started},
		}
	}
	e.h = e.srv.Handler()
	code, _, body := e.do(t, "GET", "/v1/gateways", adminToken, nil)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/gateways: %d %s", code, body)
	}
	var got []api.MemberInfo
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].Self || got[1].Self || got[1].Region != "eu" || len(got[1].Addrs) != 2 {
		t.Errorf("members = %+v", got)
	}
	tok := e.addTenant(t, "acme")
	if code, _, _ := e.do(t, "GET", "/v1/gateways", tok, nil); code != http.StatusForbidden {
		t.Errorf("tenant token: %d, want 403", code)
	}
}

// unavailable is a store whose every call fails as etcd's do when it
// does not answer.
type unavailable struct{ store.Store }

func (unavailable) err(op string) error {
	return fmt.Errorf("%s: %w: etcd at 10.0.0.1:2379 did not answer", op, store.ErrUnavailable)
}
func (u unavailable) Get(context.Context, string) (store.Entry, error) {
	return store.Entry{}, u.err("get")
}
func (u unavailable) List(context.Context, string) ([]store.Entry, error) {
	return nil, u.err("list")
}
func (u unavailable) Put(context.Context, string, []byte, int64) (int64, error) {
	return 0, u.err("put")
}

// TestStoreUnavailable: a write while the store does not answer is a 503
// that says so, not a 500.
func TestStoreUnavailable(t *testing.T) {
	e := newEnv(t)
	e.srv.Store = unavailable{e.st}
	e.h = e.srv.Handler()
	code, _, body := e.do(t, "POST", "/v1/tenants", adminToken, strings.NewReader(`{"name":"other"}`))
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "store unavailable") || !strings.Contains(string(body), "etcd") {
		t.Errorf("POST /v1/tenants with etcd down: %d %s", code, body)
	}
}
