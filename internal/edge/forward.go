package edge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/proxy"
	"github.com/webgw/webgw/internal/proxyproto"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/tunnel"
)

// forwardDialTimeout bounds opening the upstream of a forwarded connection
// or UDP session.
const forwardDialTimeout = 10 * time.Second

// TCPForwarder forwards the connections of a public TCP port to a service:
// each one becomes a KindTCP tunnel stream to an agent (or a connection to a
// direct upstream), spliced with half-close. Set the exported fields before
// Serve; they are not changed afterwards.
type TCPForwarder struct {
	// Lookup returns the service the port forwards to; a nil result closes
	// the connection. Called once per connection. Unused when SNI is set.
	Lookup func() *route.Service
	// SNI, when set, makes the port an SNI port: each connection's TLS
	// ClientHello is read (within HelloTimeout) and SNI maps its server
	// name to the tls service the connection goes to; a nil result, or no
	// ClientHello, closes the connection.
	SNI func(serverName string) *route.Service
	// HelloTimeout bounds reading the ClientHello on an SNI port; 0 means 10 s.
	HelloTimeout time.Duration
	// ProxyProtocol, when 1 or 2, sends a PROXY header of that version
	// (client address -> the address the client connected to) as the first
	// bytes towards the backend. 0 follows the service's own setting
	// (route.Service.ProxyProtocol).
	ProxyProtocol int
	// IdleTimeout closes a connection after no byte moved either way for
	// this long; 0 means 10 min.
	IdleTimeout time.Duration
	// AccessLog logs one line (at info) per connection when it ends.
	AccessLog bool
	// MaxConnsPerIP bounds the open connections from one client IP
	// address; more are closed at once (a stranger cannot hold all of the
	// agent's streams). 0 means 256; -1 means no bound.
	MaxConnsPerIP int
	// Log gets debug messages about failed connections; nil discards them.
	Log *slog.Logger

	mu       sync.Mutex
	lns      map[net.Listener]struct{} // listeners being served; guarded by mu
	conns    map[*fwdConn]struct{}     // open connections; guarded by mu
	perIP    map[string]int            // open connections by client IP; guarded by mu
	shutdown bool                      // Shutdown was called; guarded by mu
	wg       sync.WaitGroup            // one per connection goroutine
}

// fwdConn is one forwarded connection; its fields are guarded by
// TCPForwarder.mu.
type fwdConn struct {
	client net.Conn
	stream net.Conn           // nil until dialled
	cancel context.CancelFunc // cancels the dial
	closed bool               // force-closed by Shutdown
}

func (f *TCPForwarder) maxPerIP() int {
	if f.MaxConnsPerIP == 0 {
		return 256
	}
	return f.MaxConnsPerIP
}

func (f *TCPForwarder) log() *slog.Logger {
	if f.Log != nil {
		return f.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Serve accepts connections on ln and forwards each one until ctx ends or
// ln is closed (then it returns nil), or Accept fails for good. It closes
// ln. Connections accepted run on after Serve returns, until they end or
// Shutdown closes them.
func (f *TCPForwarder) Serve(ctx context.Context, ln net.Listener) error {
	if f.ProxyProtocol < 0 || f.ProxyProtocol > 2 {
		ln.Close()
		return fmt.Errorf("tcp forwarder: ProxyProtocol %d, want 0 (none), 1 or 2", f.ProxyProtocol)
	}
	f.mu.Lock()
	if f.shutdown {
		f.mu.Unlock()
		ln.Close()
		return nil
	}
	if f.lns == nil {
		f.lns = make(map[net.Listener]struct{})
	}
	f.lns[ln] = struct{}{}
	f.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer func() {
		stop()
		ln.Close()
		f.mu.Lock()
		delete(f.lns, ln)
		f.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Like net/http: back off on resource exhaustion (EMFILE).
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				f.log().Debug("tcp forwarder accept", "err", err)
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return nil
				}
				continue
			}
			return fmt.Errorf("tcp forwarder accept: %w", err)
		}
		backoff = 0
		fc := &fwdConn{client: c}
		ip := remoteIP(c.RemoteAddr())
		f.mu.Lock()
		if f.shutdown {
			f.mu.Unlock()
			c.Close()
			continue
		}
		if limit := f.maxPerIP(); limit > 0 && f.perIP[ip] >= limit {
			f.mu.Unlock()
			f.log().Debug("tcp forwarder: too many connections from one address", "remote", ip, "max", limit)
			c.Close()
			continue
		}
		if f.conns == nil {
			f.conns = make(map[*fwdConn]struct{})
			f.perIP = make(map[string]int)
		}
		f.conns[fc] = struct{}{}
		f.perIP[ip]++
		f.wg.Add(1)
		f.mu.Unlock()
		go func() {
			defer f.wg.Done()
			f.handle(fc)
			f.mu.Lock()
			delete(f.conns, fc)
			if f.perIP[ip]--; f.perIP[ip] <= 0 {
				delete(f.perIP, ip)
			}
			f.mu.Unlock()
		}()
	}
}

// handle forwards one connection and closes it.
func (f *TCPForwarder) handle(fc *fwdConn) {
	c := fc.client
	var (
		svc *route.Service
		sni string
	)
	if f.SNI != nil {
		to := f.HelloTimeout
		if to == 0 {
			to = 10 * time.Second
		}
		c.SetReadDeadline(time.Now().Add(to))
		hello, peeked, err := peekClientHello(c)
		c.SetReadDeadline(time.Time{})
		if err != nil {
			f.log().Debug("tcp forward client hello", "remote", c.RemoteAddr().String(), "err", err)
			c.Close()
			return
		}
		sni = hello.serverName
		if svc = f.SNI(sni); svc == nil || svc.Protocol != model.ProtoTLS {
			c.Write(alertUnrecognizedName)
			c.Close()
			return
		}
		c = &prefixConn{Conn: c, prefix: peeked}
	} else if svc = f.lookup(); svc == nil {
		c.Close()
		return
	}
	kind := tunnel.KindTCP
	if svc.Protocol == model.ProtoTLS {
		kind = tunnel.KindTLS
	}
	ctx, cancel := context.WithTimeout(context.Background(), forwardDialTimeout)
	defer cancel()
	f.mu.Lock()
	if fc.closed {
		f.mu.Unlock()
		return
	}
	fc.cancel = cancel
	f.mu.Unlock()

	client := clientAddr(c.RemoteAddr())
	stream, _, err := svc.DialContext(ctx, &tunnel.Header{Kind: kind, Service: svc.Name, Client: client, Host: sni}, remoteIP(c.RemoteAddr()))
	if err != nil {
		f.log().Debug("tcp forward dial", "service", svc.Name, "remote", client, "err", err)
		c.Close()
		return
	}
	f.mu.Lock()
	if fc.closed {
		f.mu.Unlock()
		stream.Close()
		return
	}
	fc.stream = stream
	f.mu.Unlock()
	pp := f.ProxyProtocol
	if pp == 0 {
		pp = svc.ProxyProtocol()
	}
	if pp == 1 || pp == 2 {
		if err := proxyproto.WriteHeader(stream, proxyproto.Version(pp), c.RemoteAddr(), c.LocalAddr()); err != nil {
			f.log().Debug("tcp forward proxy header", "service", svc.Name, "remote", client, "err", err)
			stream.Close()
			c.Close()
			return
		}
	}
	idle := f.IdleTimeout
	if idle == 0 {
		idle = 10 * time.Minute
	}
	start := time.Now()
	in, out := proxy.Splice(c, stream, idle)
	svc.CountRequest()
	if svc.Metrics != nil {
		svc.Metrics.Count(0)
	}
	if f.AccessLog {
		f.log().Info("stream", "service", svc.Name, "remote", client, "sni", sni,
			"bytes_in", in, "bytes_out", out, "duration", time.Since(start).Round(time.Millisecond).String())
	}
}

func (f *TCPForwarder) lookup() *route.Service {
	if f.Lookup == nil {
		return nil
	}
	return f.Lookup()
}

// Conns is the number of open forwarded connections.
func (f *TCPForwarder) Conns() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

// Shutdown stops accepting (closing the listeners Serve is serving) and
// waits for the open connections to end. When ctx ends first, it closes
// them and returns ctx's error; their goroutines then end as soon as each
// upstream has seen the close (a tunnel stream's peer closes too, or the
// idle timeout passes), and Conns counts them until then.
func (f *TCPForwarder) Shutdown(ctx context.Context) error {
	f.mu.Lock()
	f.shutdown = true
	for ln := range f.lns {
		ln.Close()
	}
	f.mu.Unlock()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	f.mu.Lock()
	for fc := range f.conns {
		fc.closed = true
		if fc.cancel != nil {
			fc.cancel()
		}
		fc.client.Close()
		if fc.stream != nil {
			fc.stream.Close()
		}
	}
	f.mu.Unlock()
	return ctx.Err()
}

// UDPForwarder forwards the datagrams of a public UDP port to a service: each
// client address gets a session, a KindUDP tunnel stream (or a connection to
// a direct upstream) carrying its datagrams framed both ways. Set the
// exported fields before Serve; they are not changed afterwards.
type UDPForwarder struct {
	// Lookup returns the service the port forwards to; a nil result drops
	// the new client's datagram. Called once per new session.
	Lookup func() *route.Service
	// IdleTimeout ends a session after no datagram moved either way for
	// this long; 0 means 60 s.
	IdleTimeout time.Duration
	// MaxSessions bounds the sessions open at once; the datagrams of new
	// clients beyond it are dropped. 0 means 1024.
	MaxSessions int
	// Limit, when set, is a bound shared with other forwarders (a tenant's
	// ports): a new session also needs a slot in it.
	Limit *SessionLimit
	// AccessLog logs one line (at info) per session when it ends.
	AccessLog bool
	// Log gets debug messages about failed sessions and rate-limited
	// warnings about drops; nil discards them.
	Log *slog.Logger

	mu       sync.Mutex
	sessions map[udpKey]*udpSession // guarded by mu
	drops    atomic.Int64
	dropLog  atomic.Int64 // unix nanos of the last drop warning
}

// SessionLimit bounds the UDP sessions of several forwarders together. Its
// zero value is no bound.
type SessionLimit struct {
	// Max is the bound; 0 means none. Set before use.
	Max int64
	n   atomic.Int64
}

func (l *SessionLimit) acquire() bool {
	if l == nil {
		return true
	}
	if n := l.n.Add(1); l.Max > 0 && n > l.Max {
		l.n.Add(-1)
		return false
	}
	return true
}

func (l *SessionLimit) release() {
	if l != nil {
		l.n.Add(-1)
	}
}

// Sessions is the number of sessions holding a slot.
func (l *SessionLimit) Sessions() int64 { return l.n.Load() }

// udpKey identifies a session: the port's socket and the client address.
type udpKey struct {
	pc     net.PacketConn
	client string
}

// udpQueue is how many datagrams from the client wait for a session's
// stream before more are dropped: about 50 ms of a 5000 datagrams/s flow,
// enough to ride out a scheduling pause on a loaded gateway.
const udpQueue = 256

// udpSession is one client's flow. Its goroutine (UDPForwarder.run) owns
// the stream; the serve loop only queues datagrams.
type udpSession struct {
	client net.Addr
	queue  chan []byte  // client -> stream; never closed
	last   atomic.Int64 // unix nanos when a datagram last moved either way
}

func (s *udpSession) touch() { s.last.Store(time.Now().UnixNano()) }

func (f *UDPForwarder) log() *slog.Logger {
	if f.Log != nil {
		return f.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Sessions is the number of open sessions.
func (f *UDPForwarder) Sessions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sessions)
}

// Drops is the number of datagrams dropped so far: of new clients over
// MaxSessions, or queued behind a stream that does not keep up.
func (f *UDPForwarder) Drops() int64 { return f.drops.Load() }

// Serve reads datagrams from pc and forwards them until ctx ends or pc is
// closed (then it returns nil), or a read fails for good. It closes pc and
// returns only after every session it started has ended.
func (f *UDPForwarder) Serve(ctx context.Context, pc net.PacketConn) error {
	idle := f.IdleTimeout
	if idle == 0 {
		idle = 60 * time.Second
	}
	maxSessions := f.MaxSessions
	if maxSessions == 0 {
		maxSessions = 1024
	}
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer func() {
		stop()
		pc.Close()
		cancel()
		wg.Wait()
	}()

	buf := make([]byte, tunnel.MaxDatagramLen)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("udp forwarder read: %w", err)
		}
		p := make([]byte, n)
		copy(p, buf[:n])
		key := udpKey{pc, addr.String()}
		f.mu.Lock()
		s := f.sessions[key]
		if s == nil {
			if len(f.sessions) >= maxSessions {
				f.mu.Unlock()
				f.drop("udp forwarder at MaxSessions, dropping new clients' datagrams", "max_sessions", maxSessions)
				continue
			}
			if !f.Limit.acquire() {
				f.mu.Unlock()
				f.drop("udp sessions of the tenant at their limit, dropping new clients' datagrams", "max_sessions", f.Limit.Max)
				continue
			}
			if f.sessions == nil {
				f.sessions = make(map[udpKey]*udpSession)
			}
			s = &udpSession{client: addr, queue: make(chan []byte, udpQueue)}
			s.touch()
			f.sessions[key] = s
			wg.Add(1)
			go func() {
				defer wg.Done()
				f.run(sctx, pc, key, s, idle)
			}()
		}
		f.mu.Unlock()
		select {
		case s.queue <- p:
		default:
			f.drop("udp forwarder stream not keeping up, dropping datagrams", "remote", key.client)
		}
	}
}

// drop counts a dropped datagram and logs msg at most every 10 s.
func (f *UDPForwarder) drop(msg string, args ...any) {
	f.drops.Add(1)
	now := time.Now().UnixNano()
	if prev := f.dropLog.Load(); now-prev >= int64(10*time.Second) && f.dropLog.CompareAndSwap(prev, now) {
		f.log().Warn(msg, append(args, "drops", f.drops.Load())...)
	}
}

// run is session s's goroutine: it opens the stream, writes the client's
// queued datagrams to it, and runs (and stops) the goroutine that writes
// the stream's datagrams back to the client, until the session ends.
func (f *UDPForwarder) run(ctx context.Context, pc net.PacketConn, key udpKey, s *udpSession, idle time.Duration) {
	// The session leaves the map first when it ends, so that the client's
	// next datagram opens a new one rather than queue to this one.
	remove := sync.OnceFunc(func() {
		f.mu.Lock()
		delete(f.sessions, key)
		f.mu.Unlock()
		f.Limit.release()
	})
	defer remove()
	svc := f.lookupUDP()
	if svc == nil {
		return
	}
	client := clientAddr(s.client)
	dctx, dcancel := context.WithTimeout(ctx, forwardDialTimeout)
	stream, up, err := svc.DialContext(dctx, &tunnel.Header{Kind: tunnel.KindUDP, Service: svc.Name, Client: client}, remoteIP(s.client))
	dcancel()
	if err != nil {
		f.log().Debug("udp forward dial", "service", svc.Name, "remote", client, "err", err)
		return
	}
	// A direct upstream is a connected UDP socket: one Read or Write is one
	// datagram, no framing. A tunnel stream carries them framed.
	var dc tunnel.DatagramConn
	if ds, ok := agentSession(up).(datagramSession); ok {
		dc = ds.Datagrams(stream) // QUIC datagrams when the session has them
	} else {
		dc = tunnel.StreamDatagrams(stream)
	}
	defer dc.Close()
	read := dc.ReadDatagram
	write := dc.WriteDatagram
	if up != nil && up.Direct != nil {
		read = stream.Read
		write = func(p []byte) error {
			if _, err := stream.Write(p); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				return err
			}
			return nil
		}
	}
	svc.CountRequest()
	if svc.Metrics != nil {
		svc.Metrics.Count(0)
	}
	defer stream.Close()
	start := time.Now()
	var nIn, nOut atomic.Int64 // datagrams client -> backend, backend -> client
	if f.AccessLog {
		defer func() {
			f.log().Info("udp session", "service", svc.Name, "remote", client, "datagrams_in", nIn.Load(),
				"datagrams_out", nOut.Load(), "duration", time.Since(start).Round(time.Millisecond).String())
		}()
	}

	readerDone := make(chan struct{})
	go func() { // stream -> client
		defer close(readerDone)
		buf := make([]byte, tunnel.MaxDatagramLen)
		for {
			n, err := read(buf)
			if err != nil {
				if errors.Is(err, io.ErrShortBuffer) {
					continue
				}
				if errors.Is(err, syscall.ECONNREFUSED) {
					continue // ICMP port unreachable on a direct upstream's socket: it may come back
				}
				return
			}
			s.touch()
			nOut.Add(1)
			if _, err := pc.WriteTo(buf[:n], s.client); err != nil && errors.Is(err, net.ErrClosed) {
				return
			}
		}
	}()
	defer func() {
		remove()
		// Unblock the reader (a closed tunnel stream may still be read
		// until the peer closes too) and wait for it.
		dc.SetReadDeadline(time.Unix(1, 0))
		stream.SetReadDeadline(time.Unix(1, 0))
		<-readerDone
	}()

	timer := time.NewTimer(idle)
	defer timer.Stop()
	for {
		select {
		case p := <-s.queue:
			dc.SetWriteDeadline(time.Now().Add(idle))
			if err := write(p); err != nil {
				f.log().Debug("udp forward write", "service", svc.Name, "remote", client, "err", err)
				return
			}
			nIn.Add(1)
			s.touch()
		case <-timer.C:
			quiet := time.Since(time.Unix(0, s.last.Load()))
			if quiet >= idle {
				return
			}
			timer.Reset(idle - quiet)
		case <-readerDone:
			return
		case <-ctx.Done():
			return
		}
	}
}

// datagramSession is a tunnel session that may carry a udp stream's
// datagrams as QUIC datagrams (*tunnel.Session).
type datagramSession interface {
	Datagrams(st net.Conn) tunnel.DatagramConn
}

// agentSession is the tunnel session of an agent upstream, or nil.
func agentSession(up *route.Upstream) any {
	if up == nil || up.Agent == nil {
		return nil
	}
	return up.Agent.Session
}

func (f *UDPForwarder) lookupUDP() *route.Service {
	if f.Lookup == nil {
		return nil
	}
	return f.Lookup()
}
