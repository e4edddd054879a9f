package wg4to6

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Idle timeouts of flows, by what has been seen of them.
const (
	tcpNewTimeout         = 60 * time.Second // a SYN (or a first packet) with no answer yet
	tcpEstablishedTimeout = 2 * time.Hour
	tcpClosingTimeout     = 2 * time.Minute // a FIN was seen
	tcpClosedTimeout      = 10 * time.Second
	udpNewTimeout         = 60 * time.Second // one direction only
	udpReplyTimeout       = 180 * time.Second
	icmpTimeout           = 30 * time.Second
	fragTimeout           = 30 * time.Second
)

// Table bounds (defaults of Config.MaxFlows and Config.MaxFlowsPerPeer).
const (
	defaultMaxFlows        = 65536
	defaultMaxFlowsPerPeer = 8192
	maxFrags               = 4096
	natPortTries           = 32
)

// flowKey names a flow from the device's side: its own address and port
// and the remote one's. For ICMPv6 echo the identifier is the port of the
// side that sent the request; protocols without ports have 0 for both.
type flowKey struct {
	dev, remote         [16]byte
	devPort, remotePort uint16
	proto               uint8
}

// natKey names a NAT66 flow as the internet sees it (the address is the
// engine's one NAT address).
type natKey struct {
	remote              [16]byte
	natPort, remotePort uint16
	proto               uint8
}

// fragKey names the fragments of one packet.
type fragKey struct {
	src, dst [16]byte
	id       uint32
}

type fragEntry struct {
	dev     [16]byte // where the later fragments go (NAT66: the device's address)
	expires int64
}

// flow states.
const (
	stateNew         = iota // seen from the side that opened it only
	stateEstablished        // seen both ways
	stateClosing            // TCP FIN seen
	stateClosed             // TCP RST seen
)

// flow is one entry of the table, on two LRU lists: the table's and its
// owner's. All fields are guarded by flowTable.mu.
type flow struct {
	key     flowKey
	owner   *owner
	expires int64 // on the table's clock (nanoseconds)
	state   uint8
	inbound bool   // opened from the internet, through an open port
	natPort uint16 // NAT66 only

	prev, next   *flow // the table's LRU list, most recent first
	oprev, onext *flow // the owner's
}

// owner is the flows of one device.
type owner struct {
	key  Key
	n    int
	head flow // sentinel of the owner's list (oprev, onext)
}

// flowTable is the connection table: the flows devices opened (and those
// opened to their open ports), so replies and related ICMPv6 errors can
// come back. It is bounded in all and per device, least recently used
// flows making room; idle flows expire. Safe for concurrent use.
type flowTable struct {
	max, maxPerOwner int
	nat              bool

	mu     sync.Mutex
	flows  map[flowKey]*flow // guarded by mu
	byNAT  map[natKey]*flow  // guarded by mu; NAT66 only
	owners map[Key]*owner    // guarded by mu
	head   flow              // guarded by mu; sentinel of the LRU list (prev, next)
	frags  map[fragKey]fragEntry
}

func newFlowTable(max, maxPerOwner int, nat bool) *flowTable {
	t := &flowTable{
		max:         max,
		maxPerOwner: maxPerOwner,
		nat:         nat,
		flows:       map[flowKey]*flow{},
		owners:      map[Key]*owner{},
		frags:       map[fragKey]fragEntry{},
	}
	if nat {
		t.byNAT = map[natKey]*flow{}
	}
	t.head.prev, t.head.next = &t.head, &t.head
	return t
}

func (k flowKey) nat(port uint16) natKey {
	return natKey{remote: k.remote, natPort: port, remotePort: k.remotePort, proto: k.proto}
}

// len returns the number of flows.
func (t *flowTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.flows)
}

// ownerLen returns the number of flows of device key.
func (t *flowTable) ownerLen(key Key) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if o := t.owners[key]; o != nil {
		return o.n
	}
	return 0
}

// outbound records a packet from device dev: it refreshes the flow of k or
// makes one (when create). It returns the NAT66 port of the flow, and false
// when there is no flow and none may be made (create false, or NAT66 ports
// exhausted for this remote).
func (t *flowTable) outbound(now int64, dev Key, k flowKey, tcpFlags uint8, create bool) (uint16, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.lookupLocked(now, k)
	if f == nil {
		if !create {
			return 0, false
		}
		if f = t.insertLocked(now, dev, k, false); f == nil {
			return 0, false
		}
	}
	t.updateLocked(now, f, true, tcpFlags)
	return f.natPort, true
}

// inbound records a packet to a device on flow k, if there is one.
func (t *flowTable) inbound(now int64, k flowKey, tcpFlags uint8) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.lookupLocked(now, k)
	if f == nil {
		return false
	}
	t.updateLocked(now, f, false, tcpFlags)
	return true
}

// openInbound makes (or refreshes) flow k, opened from the internet to an
// open port of device dev.
func (t *flowTable) openInbound(now int64, dev Key, k flowKey, tcpFlags uint8) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.lookupLocked(now, k)
	if f == nil {
		if f = t.insertLocked(now, dev, k, true); f == nil {
			return
		}
	}
	t.updateLocked(now, f, false, tcpFlags)
}

// inboundNAT finds the flow of a NAT66 packet from the internet and
// records the packet; it returns the flow's key (the device's side).
func (t *flowTable) inboundNAT(now int64, nk natKey, tcpFlags uint8, record bool) (flowKey, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.byNAT[nk]
	if f == nil {
		return flowKey{}, false
	}
	if now > f.expires {
		t.removeLocked(f)
		return flowKey{}, false
	}
	if record {
		t.updateLocked(now, f, false, tcpFlags)
	}
	return f.key, true
}

// has reports whether flow k exists (for related ICMPv6 errors) and returns
// its NAT66 port.
func (t *flowTable) has(now int64, k flowKey) (uint16, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.lookupLocked(now, k)
	if f == nil {
		return 0, false
	}
	return f.natPort, true
}

// addFrag lets the later fragments of a packet (src, dst, id) follow its
// first one; dev is where they go.
func (t *flowTable) addFrag(now int64, src, dst [16]byte, id uint32, dev [16]byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := fragKey{src, dst, id}
	if _, ok := t.frags[k]; !ok && len(t.frags) >= maxFrags {
		for old := range t.frags { // make room: any one goes
			delete(t.frags, old)
			break
		}
	}
	t.frags[k] = fragEntry{dev: dev, expires: now + int64(fragTimeout)}
}

// frag returns where a later fragment goes, if its first one passed.
func (t *flowTable) frag(now int64, src, dst [16]byte, id uint32) ([16]byte, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := fragKey{src, dst, id}
	e, ok := t.frags[k]
	if ok && now > e.expires {
		delete(t.frags, k)
		ok = false
	}
	return e.dev, ok
}

// purgeOwner removes all flows of device key (revoked, or moved).
func (t *flowTable) purgeOwner(key Key) int {
	return t.purge(key, func(*flow) bool { return true })
}

// purgeInbound removes the flows opened from the internet to device key
// whose port is no longer open.
func (t *flowTable) purgeInbound(key Key, open func(proto uint8, port uint16) bool) int {
	return t.purge(key, func(f *flow) bool { return f.inbound && !open(f.key.proto, f.key.devPort) })
}

func (t *flowTable) purge(key Key, drop func(*flow) bool) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	o := t.owners[key]
	if o == nil {
		return 0
	}
	n := 0
	for f := o.head.onext; f != &o.head; {
		next := f.onext
		if drop(f) {
			t.removeLocked(f)
			n++
		}
		f = next
	}
	return n
}

// sweep removes the flows and fragment entries that have expired.
func (t *flowTable) sweep(now int64) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for f := t.head.prev; f != &t.head; {
		prev := f.prev
		if now > f.expires {
			t.removeLocked(f)
			n++
		}
		f = prev
	}
	for k, e := range t.frags {
		if now > e.expires {
			delete(t.frags, k)
		}
	}
	return n
}

func (t *flowTable) lookupLocked(now int64, k flowKey) *flow {
	f := t.flows[k]
	if f != nil && now > f.expires {
		t.removeLocked(f)
		return nil
	}
	return f
}

// insertLocked makes flow k of device dev, evicting the least recently
// used flow of the device, or of the table, when full. It returns nil when
// a NAT66 port cannot be found.
func (t *flowTable) insertLocked(now int64, dev Key, k flowKey, inbound bool) *flow {
	var natPort uint16
	if t.nat {
		var ok bool
		if natPort, ok = t.natPortLocked(now, k); !ok {
			return nil
		}
	}
	o := t.owners[dev]
	if o == nil {
		o = &owner{key: dev}
		o.head.oprev, o.head.onext = &o.head, &o.head
		t.owners[dev] = o
	}
	if o.n >= t.maxPerOwner {
		t.removeLocked(o.head.oprev)
	}
	if len(t.flows) >= t.max {
		t.removeLocked(t.head.prev)
	}
	if t.owners[dev] == nil { // the eviction took the owner's last flow
		t.owners[dev] = o
	}
	f := &flow{key: k, owner: o, inbound: inbound, natPort: natPort, expires: now}
	t.flows[k] = f
	if t.nat {
		t.byNAT[k.nat(natPort)] = f
	}
	o.n++
	f.next, f.prev = t.head.next, &t.head
	f.next.prev, t.head.next = f, f
	f.onext, f.oprev = o.head.onext, &o.head
	f.onext.oprev, o.head.onext = f, f
	return f
}

// natPortLocked picks the NAT66 port of a new flow: the device's own port
// when free for this remote, else a random one.
func (t *flowTable) natPortLocked(now int64, k flowKey) (uint16, bool) {
	free := func(p uint16) bool {
		f := t.byNAT[k.nat(p)]
		if f != nil && now > f.expires {
			t.removeLocked(f)
			return true
		}
		return f == nil
	}
	if free(k.devPort) {
		return k.devPort, true
	}
	if k.devPort == 0 && k.remotePort == 0 && k.proto != protoICMPv6 {
		return 0, false // no ports to tell flows apart
	}
	for range natPortTries {
		p := uint16(1024 + rand.N(65536-1024))
		if free(p) {
			return p, true
		}
	}
	return 0, false
}

// updateLocked records a packet on f (out: from the device) and moves f to
// the front of the LRU lists.
func (t *flowTable) updateLocked(now int64, f *flow, out bool, tcpFlags uint8) {
	fromOpener := out != f.inbound
	var timeout time.Duration
	switch f.key.proto {
	case protoTCP:
		switch {
		case tcpFlags&tcpRST != 0:
			f.state = stateClosed
		case tcpFlags&(tcpSYN|tcpACK) == tcpSYN:
			f.state = stateNew // a new connection, perhaps reusing the ports
		case tcpFlags&tcpFIN != 0 && f.state != stateClosed:
			f.state = stateClosing
		case f.state == stateNew && !fromOpener:
			f.state = stateEstablished
		}
		switch f.state {
		case stateNew:
			timeout = tcpNewTimeout
		case stateEstablished:
			timeout = tcpEstablishedTimeout
		case stateClosing:
			timeout = tcpClosingTimeout
		default:
			timeout = tcpClosedTimeout
		}
	case protoICMPv6:
		timeout = icmpTimeout
	default:
		if f.state == stateNew && !fromOpener {
			f.state = stateEstablished
		}
		timeout = udpNewTimeout
		if f.state == stateEstablished {
			timeout = udpReplyTimeout
		}
	}
	f.expires = now + int64(timeout)
	if t.head.next != f {
		f.prev.next, f.next.prev = f.next, f.prev
		f.next, f.prev = t.head.next, &t.head
		f.next.prev, t.head.next = f, f
	}
	o := f.owner
	if o.head.onext != f {
		f.oprev.onext, f.onext.oprev = f.onext, f.oprev
		f.onext, f.oprev = o.head.onext, &o.head
		f.onext.oprev, o.head.onext = f, f
	}
}

func (t *flowTable) removeLocked(f *flow) {
	delete(t.flows, f.key)
	if t.nat {
		if t.byNAT[f.key.nat(f.natPort)] == f {
			delete(t.byNAT, f.key.nat(f.natPort))
		}
	}
	f.prev.next, f.next.prev = f.next, f.prev
	f.oprev.onext, f.onext.oprev = f.onext, f.oprev
	f.prev, f.next, f.oprev, f.onext = nil, nil, nil, nil
	o := f.owner
	o.n--
	if o.n == 0 {
		delete(t.owners, o.key)
	}
}
