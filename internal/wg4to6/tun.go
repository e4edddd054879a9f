package wg4to6

import "golang.zx2c4.com/wireguard/tun"

var (
	_ tun.Device = (*ownedTUN)(nil)
	_ tun.Device = (*policyTUN)(nil)
)

// ownedTUN is a kernel TUN whose state its owner (the engine) controls:
// WireGuard never sees the kernel's up and down events, which would make it
// open its UDP sockets on whatever thread handles them (and so perhaps in
// another network namespace than the engine's), and its MTU is the one
// configured, not one looked up by interface name (again per namespace).
type ownedTUN struct {
	tun.Device
	mtu    int
	events chan tun.Event // never sent on; closed when the kernel TUN's are
}

func ownTUN(dev tun.Device, mtu int) *ownedTUN {
	t := &ownedTUN{Device: dev, mtu: mtu, events: make(chan tun.Event)}
	go func() {
		for range dev.Events() {
			// The kernel TUN's listener blocks if nobody reads.
		}
		close(t.events)
	}()
	return t
}

func (t *ownedTUN) Events() <-chan tun.Event { return t.events }

func (t *ownedTUN) MTU() (int, error) { return t.mtu, nil }

// policyTUN is the tun.Device WireGuard uses: the kernel TUN with the
// policy in front of it. Packets WireGuard writes come from devices (they
// go to the internet: policy.out); packets it reads are from the internet
// (to devices: policy.in). A dropped packet read is given size 0, which
// WireGuard skips.
type policyTUN struct {
	*ownedTUN
	pol   *policy
	clock func() int64 // the flow table's time, in nanoseconds
}

func (t *policyTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := t.ownedTUN.Read(bufs, sizes, offset)
	if n > 0 {
		now := t.clock()
		for i := range n {
			if sizes[i] > 0 && t.pol.in(now, bufs[i][offset:offset+sizes[i]]) != pass {
				sizes[i] = 0
			}
		}
	}
	return n, err
}

func (t *policyTUN) Write(bufs [][]byte, offset int) (int, error) {
	now := t.clock()
	kept := bufs[:0] // WireGuard drops bufs after the call
	for _, b := range bufs {
		if t.pol.out(now, b[offset:]) == pass {
			kept = append(kept, b)
		}
	}
	if len(kept) == 0 {
		return 0, nil
	}
	return t.ownedTUN.Write(kept, offset)
}
