package proxyproto

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	pp "github.com/pires/go-proxyproto"
)

// DefaultTimeout bounds the reading of the PROXY header of a trusted
// connection when NewListener is given a timeout <= 0.
const DefaultTimeout = 5 * time.Second

// Listener accepts connections on a public listener behind a load balancer
// that speaks the PROXY protocol. Create it with NewListener.
//
// A connection from a trusted source (its peer address is in one of the
// trusted prefixes) MUST open with a PROXY header, v1 or v2 (go-proxyproto's
// REQUIRE policy). The header is read before Accept returns the connection,
// in a goroutine of its own, so a slow or silent trusted client never holds
// up the accept loop; once accepted, RemoteAddr is the header's source and
// LocalAddr its destination, and neither call blocks. (go-proxyproto's own
// Listener reads the header lazily, on the first Read, RemoteAddr or
// LocalAddr, so an accept loop or hook that asks for RemoteAddr, such as
// http.Server's ConnState, would stall for up to the timeout.)
//
// A header with the LOCAL command (v2) or UNKNOWN (v1), which balancers send
// for their own health checks, or with an unspecified address family, is
// accepted and leaves the socket's addresses. A trusted connection is
// closed, and never returned by Accept, when no valid header arrives within
// the timeout, when the header is malformed, or when it announces something
// other than TCP over IPv4 or IPv6 (UDP or Unix addresses make no sense on a
// TCP listener).
//
// A connection from any other source is returned at once, untouched (policy
// SKIP): a PROXY header it sends is not interpreted and stays application
// data, so the TLS or HTTP layer above fails on it. Only trusted balancers can
// therefore choose the client address.
//
// Each trusted connection holds a goroutine while its header is read, for at
// most the timeout; as only listed balancers reach that state, no further
// limit is applied.
type Listener struct {
	ln      net.Listener
	policy  pp.ConnPolicyFunc
	timeout time.Duration

	ctx    context.Context // cancelled by Close; stops all goroutines below
	cancel context.CancelFunc
	ready  chan accepted  // connections and errors for Accept, unbuffered
	wg     sync.WaitGroup // the accept loop and the header readers
}

var _ net.Listener = (*Listener)(nil)

type accepted struct {
	conn net.Conn
	err  error
}

// NewListener wraps ln. trusted lists the sources whose PROXY header is
// required and believed (the --proxy-protocol-from prefixes); peer addresses
// are compared unmapped (an IPv4 client on a dual-stack socket matches an
// IPv4 prefix) and invalid prefixes match nothing. timeout bounds the reading
// of each trusted connection's header; <= 0 means DefaultTimeout.
//
// NewListener starts the accept loop at once, in a goroutine owned by the
// returned listener: Close stops it, closes connections whose header is still
// being read, and waits for all of its goroutines. It takes ownership of ln.
func NewListener(ln net.Listener, trusted []netip.Prefix, timeout time.Duration) net.Listener {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		ln:      ln,
		policy:  trustPolicy(trusted),
		timeout: timeout,
		ctx:     ctx,
		cancel:  cancel,
		ready:   make(chan accepted),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// trustPolicy requires a header from the trusted prefixes and skips header
// processing for everybody else.
func trustPolicy(trusted []netip.Prefix) pp.ConnPolicyFunc {
	prefixes := make([]netip.Prefix, 0, len(trusted))
	for _, p := range trusted {
		if p.IsValid() {
			prefixes = append(prefixes, p.Masked())
		}
	}
	return func(o pp.ConnPolicyOptions) (pp.Policy, error) {
		ap, err := addrPort(o.Upstream)
		if err != nil {
			return pp.SKIP, nil // not an IP peer: nobody we trust
		}
		for _, p := range prefixes {
			if p.Contains(ap.Addr()) {
				return pp.REQUIRE, nil
			}
		}
		return pp.SKIP, nil
	}
}

// validate admits the headers that make sense on a TCP listener.
func validate(h *pp.Header) error {
	if h.Command.IsLocal() {
		return nil
	}
	switch h.TransportProtocol {
	case pp.TCPv4, pp.TCPv6, pp.UNSPEC:
		// UNSPEC carries no address: the socket's addresses stay.
	default:
		return fmt.Errorf("proxy protocol header: transport %#x on a TCP listener", byte(h.TransportProtocol))
	}
	return nil
}

// Accept returns the next connection: an untrusted one as soon as it is
// accepted, a trusted one once its PROXY header has been read. Errors of the
// underlying listener are passed on; after Close it returns net.ErrClosed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case a := <-l.ready:
		return a.conn, a.err
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close closes the underlying listener and the connections whose header is
// still being read, and waits for the listener's goroutines to end.
func (l *Listener) Close() error {
	l.cancel()
	err := l.ln.Close()
	l.wg.Wait()
	return err
}

// Addr returns the underlying listener's address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// acceptLoop accepts from the underlying listener until it is closed. It
// runs in its own goroutine, owned by l.
func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				// Closed under us (Close, or ln closed directly): let
				// Accept report it too.
				l.cancel()
				return
			}
			if !l.deliver(accepted{err: err}) {
				return
			}
			continue
		}
		conn, trusted := l.wrap(c)
		if !trusted {
			if !l.deliver(accepted{conn: conn}) {
				return
			}
			continue
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			if err := l.readHeader(conn); err != nil {
				conn.Close()
				return
			}
			l.deliver(accepted{conn: halfCloser{conn.(*pp.Conn)}})
		}()
	}
}

// halfCloser adds CloseWrite to a go-proxyproto Conn over TCP, so relays
// can pass a client's half-close on.
type halfCloser struct{ *pp.Conn }

// CloseWrite shuts down the writing side of the TCP connection.
func (c halfCloser) CloseWrite() error {
	if tc, ok := c.TCPConn(); ok {
		return tc.CloseWrite()
	}
	return c.Close()
}

// deliver hands a to Accept. It reports false, having closed a's connection,
// when the listener is closed first.
func (l *Listener) deliver(a accepted) bool {
	select {
	case l.ready <- a:
		return true
	case <-l.ctx.Done():
		if a.conn != nil {
			a.conn.Close()
		}
		return false
	}
}

// wrap applies the trust policy to c: an untrusted c is returned as is, a
// trusted one wrapped in a go-proxyproto Conn that requires a valid header.
func (l *Listener) wrap(c net.Conn) (conn net.Conn, trusted bool) {
	policy, _ := l.policy(pp.ConnPolicyOptions{Upstream: c.RemoteAddr(), Downstream: c.LocalAddr()})
	if policy == pp.SKIP {
		return c, false
	}
	return pp.NewConn(c,
		pp.WithPolicy(policy),
		pp.ValidateHeader(validate),
		pp.SetReadHeaderTimeout(l.timeout),
	), true
}

// readHeader makes conn (from wrap) read its PROXY header now, within the
// timeout or until the listener is closed, and returns why it failed.
func (l *Listener) readHeader(conn net.Conn) error {
	pc := conn.(*pp.Conn)
	stop := context.AfterFunc(l.ctx, func() { pc.Close() })
	defer stop()
	if pc.ProxyHeader() == nil {
		// Under REQUIRE a missing header is always an error, which Read
		// returns again without touching the connection.
		_, err := pc.Read(nil)
		return fmt.Errorf("proxy protocol header from %v: %w", pc.Raw().RemoteAddr(), err)
	}
	return l.ctx.Err()
}
