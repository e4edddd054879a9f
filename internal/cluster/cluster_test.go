package cluster_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/cluster"
	"github.com/webgw/webgw/internal/store"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ids(ms []cluster.Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return out
}

// TestMembersAndHeld: two gateways on one store see each other, see what
// the other holds, and see it leave at once when it stops.
func TestMembersAndHeld(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a, err := cluster.New(st, cluster.Member{ID: "a", Addrs: []string{"192.0.2.1"}, Tunnel: "192.0.2.1:443"}, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := cluster.New(st, cluster.Member{ID: "b", Addrs: []string{"192.0.2.2"}, Tunnel: "192.0.2.2:443"}, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	actx, stopA := context.WithCancel(t.Context())
	aDone := make(chan struct{})
	go func() { defer close(aDone); a.Run(actx) }()
	bctx, stopB := context.WithCancel(t.Context())
	defer stopB()
	go b.Run(bctx)
	<-a.Ready()
	<-b.Ready()
	waitFor(t, "both members seen by both", func() bool {
		return slices.Equal(ids(a.Members()), []string{"a", "b"}) && slices.Equal(ids(b.Members()), []string{"a", "b"})
	})

	changed := b.Changed()
	a.SetHeld(map[string]cluster.Holding{"shop": {Protocol: "http"}})
	if got := a.Holders("shop"); !slices.Equal(got, []string{"a"}) {
		t.Errorf("a's own holders of shop = %v, want [a] at once", got)
	}
	waitFor(t, "b sees a hold shop", func() bool { return slices.Equal(b.Holders("shop"), []string{"a"}) })
	select {
	case <-changed:
	default:
		t.Error("b's Changed not closed by a's change")
	}
	if h := b.HeldElsewhere()["shop"]["a"]; h.Protocol != "http" {
		t.Errorf("b's view of a's holding = %+v", h)
	}
	b.SetHeld(map[string]cluster.Holding{"shop": {Protocol: "http"}})
	waitFor(t, "a sees both hold shop", func() bool { return slices.Equal(a.Holders("shop"), []string{"a", "b"}) })

	a.SetHeld(nil)
	waitFor(t, "b sees a withdraw shop", func() bool { return slices.Equal(b.Holders("shop"), []string{"b"}) })

	a.SetHeld(map[string]cluster.Holding{"web": {Protocol: "tcp", ProxyProtocol: 2}})
	waitFor(t, "b sees a hold web", func() bool { return slices.Equal(b.Holders("web"), []string{"a"}) })
	stopA()
	<-aDone
	waitFor(t, "b sees a leave", func() bool {
		return slices.Equal(ids(b.Members()), []string{"b"}) && len(b.Holders("web")) == 0
	})
}

// TestSecret: the first caller makes the secret, later ones read it.
func TestSecret(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s1, err := cluster.Secret(t.Context(), st)
	if err != nil || len(s1) != 32 {
		t.Fatalf("secret = %x, %v", s1, err)
	}
	s2, err := cluster.Secret(t.Context(), st)
	if err != nil || string(s1) != string(s2) {
		t.Fatalf("second secret = %x, %v; want %x", s2, err, s1)
	}
}
