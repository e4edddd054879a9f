package store

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var _ Store = (*Etcd)(nil)

const (
	// DefaultEtcdPrefix is where webgw keeps its keys when EtcdOptions.Prefix is empty.
	DefaultEtcdPrefix = "webgw/"
	// defaultEtcdDialTimeout is used when EtcdOptions.DialTimeout is zero.
	defaultEtcdDialTimeout = 5 * time.Second
)

// EtcdOptions configures OpenEtcd. The zero value connects over plain TCP
// without authentication, keeps keys under "webgw/" and waits up to five
// seconds for the cluster.
type EtcdOptions struct {
	// CAFile is a PEM file of CAs that sign the etcd server certificates.
	// Empty: the system roots. TLS is used when CAFile, CertFile or KeyFile is set.
	CAFile string
	// CertFile and KeyFile are the PEM client certificate and key for mutual
	// TLS. Both or neither; empty: no client certificate.
	CertFile, KeyFile string
	// Username and Password authenticate with etcd's own auth. Empty: no auth.
	Username, Password string
	// Prefix is put before every key in etcd, so several webgw clusters (or
	// other applications) can share one etcd. Empty: DefaultEtcdPrefix.
	Prefix string
	// DialTimeout bounds connecting and the first request in OpenEtcd.
	// Zero: five seconds.
	DialTimeout time.Duration
	// OpTimeout bounds each request whose context has no deadline, so a
	// write while etcd is unreachable fails with ErrUnavailable instead of
	// waiting for it. Zero: five seconds.
	OpTimeout time.Duration
}

// Etcd is a Store kept in an etcd cluster. Revisions are etcd's own
// (ModRevision), so every webgw process sharing the cluster sees the same
// revisions, and watches see changes made by any of them.
type Etcd struct {
	cli       *clientv3.Client // immutable; closed by Close
	prefix    string           // immutable
	endpoints string           // immutable, for errors
	opTimeout time.Duration    // immutable

	// stop ends every watch; Close calls it.
	stopCtx context.Context
	stop    context.CancelFunc

	mu      sync.Mutex
	closed  bool           // guarded by mu
	watches sync.WaitGroup // watch goroutines; Add under mu while open
}

// ParseEtcdURL turns a store URL such as "etcd://h1:2379,h2:2379" into
// etcd endpoints ("h1:2379", "h2:2379").
func ParseEtcdURL(s string) ([]string, error) {
	rest, ok := strings.CutPrefix(s, "etcd://")
	if !ok {
		return nil, fmt.Errorf("invalid etcd URL %q: want etcd://host:port[,host:port...]", s)
	}
	rest = strings.TrimSuffix(rest, "/")
	var endpoints []string
	for ep := range strings.SplitSeq(rest, ",") {
		host, port, err := net.SplitHostPort(ep)
		if err != nil || host == "" {
			return nil, fmt.Errorf("invalid etcd URL %q: endpoint %q is not host:port", s, ep)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("invalid etcd URL %q: endpoint %q has an invalid port", s, ep)
		}
		endpoints = append(endpoints, ep)
	}
	return endpoints, nil
}

// OpenEtcd connects to the etcd cluster at endpoints ("host:port", or URLs
// with http:// or https://) and checks it answers a read under the prefix
// within opts.DialTimeout, or before ctx ends. ctx bounds only the opening.
func OpenEtcd(ctx context.Context, endpoints []string, opts EtcdOptions) (*Etcd, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("open etcd store: no endpoints given")
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultEtcdPrefix
	}
	if err := checkKey(prefix, true); err != nil {
		return nil, fmt.Errorf("open etcd store: etcd prefix: %w", err)
	}
	timeout := opts.DialTimeout
	if timeout == 0 {
		timeout = defaultEtcdDialTimeout
	}
	tlsConf, err := etcdTLS(opts)
	if err != nil {
		return nil, fmt.Errorf("open etcd store: %w", err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: timeout,
		TLS:         tlsConf,
		Username:    opts.Username,
		Password:    opts.Password,
		Logger:      zap.NewNop(), // errors reach the caller as return values
		// After an outage, reconnect within a second or two of etcd's
		// return, not after gRPC's default backoff of up to two minutes.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		})},
		// Keepalive pings find a dead connection (etcd killed, a network
		// cut) in seconds.
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %s: %w", strings.Join(endpoints, ","), err)
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err = cli.Get(pctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1))
	if err != nil {
		cli.Close()
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			// gRPC keeps the reason (refused, TLS handshake) to itself.
			return nil, fmt.Errorf("connect to etcd %s: no answer within %v (check the endpoints and the TLS options): %w",
				strings.Join(endpoints, ","), timeout, err)
		}
		return nil, fmt.Errorf("connect to etcd %s: %w", strings.Join(endpoints, ","), err)
	}
	stopCtx, stop := context.WithCancel(context.Background())
	return &Etcd{cli: cli, prefix: prefix, endpoints: strings.Join(endpoints, ","), opTimeout: cmp.Or(opts.OpTimeout, defaultEtcdDialTimeout),
		stopCtx: stopCtx, stop: stop}, nil
}

// etcdTLS builds the client TLS configuration, or nil for plain TCP.
func etcdTLS(opts EtcdOptions) (*tls.Config, error) {
	if opts.CAFile == "" && opts.CertFile == "" && opts.KeyFile == "" {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA file %s: no PEM certificates", opts.CAFile)
		}
		conf.RootCAs = pool
	}
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return nil, errors.New("etcd client certificate: set both the cert file and the key file, or neither")
	}
	if opts.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(opts.CertFile, opts.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

// Get implements Store.
func (e *Etcd) Get(ctx context.Context, key string) (Entry, error) {
	if err := e.begin(ctx, key, false); err != nil {
		return Entry{}, fmt.Errorf("get %q: %w", key, err)
	}
	ctx, done := e.opContext(ctx)
	defer done()
	resp, err := e.cli.Get(ctx, e.prefix+key)
	if err != nil {
		return Entry{}, fmt.Errorf("get %q: %w", key, e.mapErr(err))
	}
	if len(resp.Kvs) == 0 {
		return Entry{}, fmt.Errorf("get %q: %w", key, ErrNotFound)
	}
	kv := resp.Kvs[0]
	return Entry{Key: key, Value: cloneValue(kv.Value), Rev: kv.ModRevision}, nil
}

// List implements Store. An empty result is a non-nil slice of length 0.
// The whole result comes in one etcd response.
func (e *Etcd) List(ctx context.Context, prefix string) ([]Entry, error) {
	if err := e.begin(ctx, prefix, true); err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	ctx, done := e.opContext(ctx)
	defer done()
	resp, err := e.cli.Get(ctx, e.prefix+prefix, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, e.mapErr(err))
	}
	entries := make([]Entry, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		entries = append(entries, Entry{
			Key:   strings.TrimPrefix(string(kv.Key), e.prefix),
			Value: cloneValue(kv.Value),
			Rev:   kv.ModRevision,
		})
	}
	return entries, nil
}

// Put implements Store. A conditional Put is one etcd transaction comparing
// the key's ModRevision (or, for expect 0, its CreateRevision with 0).
func (e *Etcd) Put(ctx context.Context, key string, value []byte, expect int64) (int64, error) {
	if err := e.begin(ctx, key, false); err != nil {
		return 0, fmt.Errorf("put %q: %w", key, err)
	}
	ctx, done := e.opContext(ctx)
	defer done()
	full := e.prefix + key
	if expect == AnyRev {
		resp, err := e.cli.Put(ctx, full, string(value))
		if err != nil {
			return 0, fmt.Errorf("put %q: %w", key, e.mapErr(err))
		}
		return resp.Header.Revision, nil
	}
	cmp := clientv3.Compare(clientv3.ModRevision(full), "=", expect)
	if expect == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(full), "=", 0)
	}
	resp, err := e.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(full, string(value))).Commit()
	if err != nil {
		return 0, fmt.Errorf("put %q: %w", key, e.mapErr(err))
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("put %q: %w", key, ErrConflict)
	}
	return resp.Header.Revision, nil
}

// Delete implements Store. A missing key returns ErrNotFound whatever expect is.
func (e *Etcd) Delete(ctx context.Context, key string, expect int64) error {
	if err := e.begin(ctx, key, false); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	ctx, done := e.opContext(ctx)
	defer done()
	full := e.prefix + key
	var err error
	switch expect {
	case AnyRev:
		var resp *clientv3.DeleteResponse
		if resp, err = e.cli.Delete(ctx, full); err == nil && resp.Deleted == 0 {
			err = ErrNotFound
		}
	case 0:
		// Never allowed, but a missing key still says so.
		var resp *clientv3.GetResponse
		if resp, err = e.cli.Get(ctx, full, clientv3.WithCountOnly()); err == nil {
			err = ErrConflict
			if resp.Count == 0 {
				err = ErrNotFound
			}
		}
	default:
		// A missing key has ModRevision 0, so the comparison fails for it
		// too; the Else branch tells the two failures apart.
		var resp *clientv3.TxnResponse
		resp, err = e.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(full), "=", expect)).
			Then(clientv3.OpDelete(full)).
			Else(clientv3.OpGet(full, clientv3.WithCountOnly())).
			Commit()
		if err == nil && !resp.Succeeded {
			err = ErrConflict
			if rr := resp.Responses; len(rr) == 1 && rr[0].GetResponseRange().GetCount() == 0 {
				err = ErrNotFound
			}
		}
	}
	if err != nil {
		return fmt.Errorf("delete %q: %w", key, e.mapErr(err))
	}
	return nil
}

// Watch implements Store. It reads the current etcd revision and watches
// from the one after it, so every change after Watch returns is seen, by
// any client of the cluster. The channel holds up to 1024 events; a watcher
// that lets it fill is closed, as is one whose start revision etcd has
// compacted away, whose etcd watch is cancelled, or whose member loses the
// leader.
func (e *Etcd) Watch(ctx context.Context, prefix string) (<-chan Event, error) {
	if err := e.begin(ctx, prefix, true); err != nil {
		return nil, fmt.Errorf("watch %q: %w", prefix, err)
	}
	full := e.prefix + prefix
	gctx, done := e.opContext(ctx)
	resp, err := e.cli.Get(gctx, full, clientv3.WithPrefix(), clientv3.WithCountOnly())
	done()
	if err != nil {
		return nil, fmt.Errorf("watch %q: %w", prefix, e.mapErr(err))
	}

	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, fmt.Errorf("watch %q: %w", prefix, ErrClosed)
	}
	e.watches.Add(1)
	e.mu.Unlock()

	wctx, cancel := context.WithCancel(ctx)
	stopAfter := context.AfterFunc(e.stopCtx, cancel)
	// WithRequireLeader: a member cut off from the leader ends the watch
	// rather than going quiet, so the caller re-lists elsewhere.
	wch := e.cli.Watch(clientv3.WithRequireLeader(wctx), full, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	out := make(chan Event, watchBuffer)
	go func() {
		defer e.watches.Done()
		defer close(out)
		defer stopAfter()
		defer cancel() // ends the etcd watch when we leave early
		for wr := range wch {
			if wr.Canceled || wr.CompactRevision != 0 || wr.Err() != nil {
				return
			}
			for _, ev := range wr.Events {
				select {
				case out <- e.event(ev):
				default:
					return // too far behind: the caller re-lists and watches again
				}
			}
		}
	}()
	return out, nil
}

// event maps an etcd event to a store Event with its own copy of the value.
func (e *Etcd) event(ev *clientv3.Event) Event {
	entry := Entry{
		Key: strings.TrimPrefix(string(ev.Kv.Key), e.prefix),
		Rev: ev.Kv.ModRevision,
	}
	if ev.Type == clientv3.EventTypeDelete {
		return Event{Type: EventDelete, Entry: entry}
	}
	entry.Value = cloneValue(ev.Kv.Value)
	return Event{Type: EventPut, Entry: entry}
}

// Close implements Store. It closes every watch channel, then the etcd
// client; calls still in flight fail with ErrClosed. It is idempotent: only
// the first call does anything and may return an error.
func (e *Etcd) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	e.stop()
	e.watches.Wait()
	if err := e.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close etcd client: %w", err)
	}
	return nil
}

// begin checks what every method checks first: the store is open, ctx is
// live, and key (or prefix, which may be empty) is acceptable.
func (e *Etcd) begin(ctx context.Context, key string, isPrefix bool) error {
	if e.isClosed() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return checkKey(key, isPrefix)
}

// opContext returns ctx, also cancelled by Close, so calls in flight end
// promptly instead of waiting out the client's retries, and bounded by the
// operation timeout when ctx has no deadline. Call done after.
func (e *Etcd) opContext(ctx context.Context) (context.Context, func()) {
	var cancel context.CancelFunc
	if _, ok := ctx.Deadline(); ok || e.opTimeout <= 0 {
		ctx, cancel = context.WithCancel(ctx)
	} else {
		ctx, cancel = context.WithTimeout(ctx, e.opTimeout)
	}
	stop := context.AfterFunc(e.stopCtx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

func (e *Etcd) isClosed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closed
}

// mapErr reports a failure caused by Close as ErrClosed, and one of an
// etcd that did not answer in time (or has no leader) as ErrUnavailable;
// others pass through.
func (e *Etcd) mapErr(err error) error {
	if e.isClosed() && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrConflict) {
		return fmt.Errorf("%w (%v)", ErrClosed, err)
	}
	if errors.Is(err, context.DeadlineExceeded) || isUnavailable(err) {
		return fmt.Errorf("%w: etcd at %s did not answer (%v); what this gateway knows is still served, changes are refused until etcd is back",
			ErrUnavailable, e.endpoints, err)
	}
	return err
}

// isUnavailable reports gRPC's codes for a cluster that cannot answer now.
func isUnavailable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrGRPCNoLeader) ||
		errors.Is(err, rpctypes.ErrLeaderChanged) || errors.Is(err, rpctypes.ErrTimeout)
}

// cloneValue copies an etcd value; an empty value is non-nil, as from Bolt.
func cloneValue(v []byte) []byte {
	if len(v) == 0 {
		return []byte{}
	}
	return bytes.Clone(v)
}

var _ Leaser = (*Etcd)(nil)

// Grant implements Leaser with an etcd lease, renewed by the client until
// Close. When etcd stays unreachable past the TTL, etcd expires the lease
// (its keys vanish for every other gateway) and Done is closed.
func (e *Etcd) Grant(ctx context.Context, ttl time.Duration) (Lease, error) {
	if err := e.begin(ctx, "lease", false); err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	secs := max(int64((ttl+time.Second-1)/time.Second), 1)
	gctx, done := e.opContext(ctx)
	resp, err := e.cli.Grant(gctx, secs)
	done()
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", e.mapErr(err))
	}
	kctx, cancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(e.stopCtx, cancel)
	ch, err := e.cli.KeepAlive(kctx, resp.ID)
	if err != nil {
		stop()
		cancel()
		return nil, fmt.Errorf("keep lease alive: %w", e.mapErr(err))
	}
	l := &etcdLease{e: e, id: resp.ID, cancel: func() { stop(); cancel() }, done: make(chan struct{})}
	go func() {
		for range ch { // the client renews; the channel closes when the lease is lost or cancelled
		}
		l.once.Do(func() { close(l.done) })
	}()
	return l, nil
}

type etcdLease struct {
	e      *Etcd
	id     clientv3.LeaseID
	cancel func() // stops the renewals
	done   chan struct{}
	once   sync.Once // closes done
	closed sync.Once
}

func (l *etcdLease) Put(ctx context.Context, key string, value []byte) (int64, error) {
	if err := l.e.begin(ctx, key, false); err != nil {
		return 0, fmt.Errorf("put %q: %w", key, err)
	}
	select {
	case <-l.done:
		return 0, fmt.Errorf("put %q: lease lost", key)
	default:
	}
	ctx, done := l.e.opContext(ctx)
	defer done()
	resp, err := l.e.cli.Put(ctx, l.e.prefix+key, string(value), clientv3.WithLease(l.id))
	if err != nil {
		return 0, fmt.Errorf("put %q: %w", key, l.e.mapErr(err))
	}
	return resp.Header.Revision, nil
}

func (l *etcdLease) Done() <-chan struct{} { return l.done }

func (l *etcdLease) Close() error {
	var err error
	l.closed.Do(func() {
		l.cancel()
		if !l.e.isClosed() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err = l.e.cli.Revoke(ctx, l.id)
			cancel()
			if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
				err = fmt.Errorf("revoke lease: %w", l.e.mapErr(err))
			} else {
				err = nil
			}
		}
		l.once.Do(func() { close(l.done) })
	})
	return err
}
