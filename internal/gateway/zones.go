package gateway

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/webgw/webgw/internal/dns"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

// loadZone reads zone name and its records from the store into zones: its
// verified state is answered, anything else (pending, removed) is not.
func (g *Gateway) loadZone(ctx context.Context, zones *dns.Zones, name string) error {
	z, zrev, err := store.GetZone(ctx, g.store, name)
	if err != nil {
		zones.Remove(name) // removed, or unreadable: not answered
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	}
	recs, rrev, err := store.ZoneRecords(ctx, g.store, name)
	if err != nil {
		return err
	}
	zones.Set(dns.ZoneData{Zone: z, Records: recs, Serial: uint32(max(zrev, rrev))})
	return nil
}

// loadZones fills zones with every verified zone in the store.
func (g *Gateway) loadZones(ctx context.Context, zones *dns.Zones) error {
	all, err := store.ListZones(ctx, g.store)
	if err != nil {
		return err
	}
	var out []dns.ZoneData
	for _, z := range all {
		if z.State != model.ZoneVerified {
			continue
		}
		_, zrev, err := store.GetZone(ctx, g.store, z.Name)
		if err != nil {
			continue // removed meanwhile; the watch tells
		}
		recs, rrev, err := store.ZoneRecords(ctx, g.store, z.Name)
		if err != nil {
			return err
		}
		out = append(out, dns.ZoneData{Zone: z, Records: recs, Serial: uint32(max(zrev, rrev))})
	}
	zones.Replace(out)
	return nil
}

// watchZones keeps zones in step with the tenants' zones in the store: a
// change is answered from the next query on.
func (g *Gateway) watchZones(ctx context.Context, zones *dns.Zones) {
	follow(ctx, g.store, store.DNSPrefix, g.log, func() {
		if err := g.loadZones(ctx, zones); err != nil {
			g.log.Error("reload dns zones", "err", err)
		}
	}, func(ev store.Event) {
		name, ok := strings.CutPrefix(ev.Entry.Key, store.ZonesPrefix)
		if !ok {
			name, ok = strings.CutPrefix(ev.Entry.Key, store.ZoneRecordsPrefix)
		}
		if !ok {
			return
		}
		if err := g.loadZone(ctx, zones, name); err != nil {
			g.log.Error("reload dns zone", "zone", name, "err", err)
		}
	})
}

// recheckZones checks the proof of control of every verified zone every
// recheck (as for custom domains): a zone whose TXT token has been gone for
// grace goes back to pending, and is no longer answered until verified
// again. gone remembers when each zone's proof was first found missing.
func (g *Gateway) recheckZones(ctx context.Context, recheck, grace time.Duration) {
	t := time.NewTicker(recheck)
	defer t.Stop()
	gone := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g.recheckZonesOnce(ctx, grace, gone, time.Now())
	}
}

func (g *Gateway) recheckZonesOnce(ctx context.Context, grace time.Duration, gone map[string]time.Time, now time.Time) {
	all, err := store.ListZones(ctx, g.store)
	if err != nil {
		g.log.Error("list zones to recheck", "err", err)
		return
	}
	for _, z := range all {
		if z.State != model.ZoneVerified || ctx.Err() != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		vals, err := g.resolver.TXT(cctx, z.ChallengeName())
		cancel()
		if err == nil && slices.Contains(vals, z.Token) {
			delete(gone, z.Name)
			continue
		}
		first, ok := gone[z.Name]
		if !ok {
			gone[z.Name] = now
			g.log.Warn("zone proof of control missing; the zone stays served for the grace period", "zone", z.Name, "err", err, "grace", grace.String())
			continue
		}
		if now.Sub(first) < grace {
			continue
		}
		if _, err := store.UpdateZone(ctx, g.store, z.Name, func(cur *model.Zone) error {
			cur.State = model.ZonePending
			return nil
		}); err != nil {
			g.log.Error("zone back to pending", "zone", z.Name, "err", err)
			continue
		}
		delete(gone, z.Name)
		g.log.Warn("zone proof of control gone past the grace period: no longer answered until verified again", "zone", z.Name)
	}
}
