package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/webgw/webgw/internal/tunnel"
)

// One change of a cluster comes as a list on every session of every gateway
// of it, and the lists of two sessions may cross (a welcome written before
// the change read after a gateways message sent after it). So the agent
// acts on them once they settle: listSettle after the last one, or
// listSettleMax after the first one of a stream that does not stop.
const (
	listSettle    = 250 * time.Millisecond
	listSettleMax = 2 * time.Second
)

// clusterState is what the agent learned from the gateway lists of the
// clusters its configured gateways belong to (spec.md 4.2, gateways).
type clusterState struct {
	// learned are the gateways connected to because a list named them, by id.
	learned map[string]*gateway
	// refused are the ids of learned gateways that refused the agent for
	// good; they are not tried again while the lists name them.
	refused map[string]bool
	// n numbers the learned gateways, for their agent ids.
	n int
}

// follow acts on the gateway lists the sessions got, once they settle,
// until ctx ends.
func (a *Agent) follow(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		}
		t := time.NewTimer(listSettle)
		give := time.Now().Add(listSettleMax)
	settle:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-a.kick:
				if time.Now().Before(give) {
					t.Reset(listSettle)
				}
			case <-t.C:
				break settle
			}
		}
		a.mu.Lock()
		a.followLocked()
		a.mu.Unlock()
	}
}

// gotGateways takes what a welcome or a gateways message from one of g's
// sessions said: the id of the gateway (reported, "" in a gateways message)
// and its cluster's live gateways (list, empty when it has no cluster or
// sent no news). Once the lists settle, follow connects to or leaves
// learned gateways to match.
func (a *Agent) gotGateways(g *gateway, reported string, list []tunnel.GatewayInfo) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if g.stop != nil && a.cluster.learned[g.id] != g {
		// A learned gateway already left (its sessions drain): what it
		// says now does not count.
		return
	}
	if reported != "" {
		g.reported = reported
	}
	if len(list) > 0 {
		// The latest list from any gateway of the cluster is the cluster.
		g.seed.view = list
	}
	if reported == "" && len(list) == 0 {
		return
	}
	select {
	case a.kick <- struct{}{}:
	default: // follow has a kick pending already
	}
}

// followLocked connects to the gateways the views of the configured gateways
// list and the agent is not connected to yet, up to cfg.MaxGateways in all,
// and leaves learned gateways no view lists any more.
//
// Views count only while their seed or a gateway learned from it has a
// session up: a configured gateway that is down for good must not keep
// gateways alive that its cluster since dropped. When none has a session up
// (the last learned gateway just refused the agent), every view counts.
// Learned gateways that are still listed are kept before new ones are
// added, so the set stays stable when a list comes again.
func (a *Agent) followLocked() {
	if a.runCtx == nil || a.runCtx.Err() != nil {
		return
	}
	defer func() { a.log.Debug("gateway lists followed", "learned", len(a.cluster.learned)) }()
	fresh := map[*gateway]bool{}
	for _, c := range a.configured {
		if c.up > 0 {
			fresh[c] = true
		}
	}
	for _, l := range a.cluster.learned {
		if l.up > 0 {
			fresh[l.seed] = true
		}
	}
	// Gateways reached through configured entries count first; an entry
	// whose gateway id is not known yet counts as one more.
	configured := map[string]bool{}
	held := 0
	for _, c := range a.configured {
		if c.reported == "" || !configured[c.reported] {
			held++
		}
		if c.reported != "" {
			configured[c.reported] = true
		}
	}
	type listing struct {
		info tunnel.GatewayInfo
		seed *gateway
	}
	listed := map[string]listing{}
	var order []string
	stillRefused := map[string]bool{}
	for _, c := range a.configured {
		if len(fresh) > 0 && !fresh[c] {
			continue
		}
		for _, gi := range c.view {
			if a.cluster.refused[gi.ID] {
				stillRefused[gi.ID] = true
				continue
			}
			if _, dup := listed[gi.ID]; dup || configured[gi.ID] {
				continue
			}
			listed[gi.ID] = listing{gi, c}
			order = append(order, gi.ID)
		}
	}
	// A gateway that refused the agent and left may come back another
	// (its operator fixed what made it refuse): it is tried again then.
	maps.DeleteFunc(a.cluster.refused, func(id string, _ bool) bool { return !stillRefused[id] })
	room := func() bool { return a.cfg.MaxGateways == 0 || held < a.cfg.MaxGateways }
	for _, id := range slices.Sorted(maps.Keys(a.cluster.learned)) {
		l := a.cluster.learned[id]
		switch li, ok := listed[id]; {
		case !ok:
			a.leaveLocked(l, "unlisted")
		case li.info.Addr != l.cfg.Addr:
			a.leaveLocked(l, "address changed")
		case !room():
			a.leaveLocked(l, "max gateways")
		default:
			held++
		}
	}
	for _, id := range order {
		if _, ok := a.cluster.learned[id]; ok {
			continue
		}
		if !room() {
			break
		}
		a.learnLocked(listed[id].info, listed[id].seed)
		held++
	}
}

// learnLocked starts cfg.Connections connections to gi with the settings of
// seed: token, trust (CA or pinned key), the TLS name seed was configured
// with or else the host of gi.Addr. It gets an agent id of its own, and asks
// for the names seed granted.
func (a *Agent) learnLocked(gi tunnel.GatewayInfo, seed *gateway) {
	if a.cluster.learned == nil {
		a.cluster.learned = map[string]*gateway{}
	}
	cfg := seed.cfg
	cfg.Addr = gi.Addr
	tc := seed.tls.Clone()
	if cfg.ServerName == "" {
		tc.ServerName = hostOf(gi.Addr)
	}
	a.cluster.n++
	ctx, stop := context.WithCancel(a.runCtx)
	g := &gateway{cfg: cfg, tls: tc, agentID: fmt.Sprintf("%s-g%d", a.id, a.cluster.n),
		seed: seed, id: gi.ID, stop: stop, granted: maps.Clone(seed.granted)}
	a.cluster.learned[gi.ID] = g
	a.log.Info("gateway learned", "id", gi.ID, "addr", gi.Addr, "region", gi.Region, "from", seed.cfg.Addr)
	for conn := range a.cfg.Connections {
		a.loops.Add(1)
		go func() {
			defer a.loops.Done()
			a.runLearned(ctx, g, conn)
		}()
	}
}

// leaveLocked drains and closes the connections to learned gateway g.
func (a *Agent) leaveLocked(g *gateway, reason string) {
	delete(a.cluster.learned, g.id)
	g.stop()
	a.log.Info("gateway left", "id", g.id, "addr", g.cfg.Addr, "reason", reason)
}

// runLearned runs connection conn to learned gateway g until it leaves or
// the agent stops. A permanent refusal there (a token another cluster does
// not know) leaves that gateway alone, not the agent.
func (a *Agent) runLearned(ctx context.Context, g *gateway, conn int) {
	err := a.runConn(ctx, g, conn)
	var pe *PermanentError
	if errors.As(err, &pe) {
		a.refusedBy(g)
	}
}

// refusedBy leaves learned gateway g, which refused the agent for good, and
// does not try it again while the lists name it.
func (a *Agent) refusedBy(g *gateway) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cluster.refused == nil {
		a.cluster.refused = map[string]bool{}
	}
	a.cluster.refused[g.id] = true
	if a.cluster.learned[g.id] == g {
		delete(a.cluster.learned, g.id)
		g.stop()
		a.followLocked() // another listed gateway may take its place
	}
}
