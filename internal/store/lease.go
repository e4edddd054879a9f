package store

import (
	"context"
	"errors"
	"time"
)

// ErrUnavailable: the store did not answer in time (etcd unreachable or
// without a leader). Reads of what a gateway already knows keep working from
// its watched views; writes fail with this error until the store is back.
var ErrUnavailable = errors.New("store unavailable")

// Leaser is implemented by stores whose keys can live only as long as their
// writer keeps them alive: gateway membership and which tunnels a gateway
// holds. Etcd uses etcd leases; Bolt ties them to the process (and drops
// them when the file is opened again after a crash).
type Leaser interface {
	// Grant starts a lease that expires ttl after its holder stops renewing
	// it, and renews it until Close.
	Grant(ctx context.Context, ttl time.Duration) (Lease, error)
}

// Lease is a set of keys that exist while the lease lives.
type Lease interface {
	// Put writes key (unconditionally), attached to the lease: it is
	// deleted when the lease ends.
	Put(ctx context.Context, key string, value []byte) (int64, error)
	// Done is closed when the lease was lost (it expired because the store
	// was unreachable for longer than its TTL) or closed. Its keys are then
	// gone, or going: the holder grants a new lease and puts them again.
	Done() <-chan struct{}
	// Close revokes the lease: its keys are deleted now. Idempotent.
	Close() error
}
