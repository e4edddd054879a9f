// Package store keeps webgw's state (tenants, services, the local CA) behind
// one small key-value interface with revisions and watches, so the embedded
// bbolt file and the etcd cluster store are interchangeable and pass one
// conformance suite (package storetest).
package store

import (
	"context"
	"errors"
)

// Errors every implementation returns, so callers can decide with errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("store: key not found")
	// ErrConflict: a conditional write found another revision than expected
	// (the key exists for Create, or changed since it was read).
	ErrConflict = errors.New("store: revision conflict")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store: closed")
)

// Entry is one key with its value and the revision of its last change.
type Entry struct {
	Key   string
	Value []byte
	// Rev is the store-wide revision at which this key was last written.
	// Revisions grow strictly with every write to the store; never 0 for a stored key.
	Rev int64
}

// EventType says what happened to a key.
type EventType int

// Event types.
const (
	EventPut EventType = iota + 1
	EventDelete
)

// Event is one change seen by a watch.
type Event struct {
	Type  EventType
	Entry Entry // for EventDelete, Value is nil and Rev is the revision of the delete
}

// AnyRev, given as the expected revision, makes a Put or Delete unconditional.
const AnyRev int64 = -1

// Store is the interface every state backend implements. Keys are
// slash-separated paths such as "tenants/acme": non-empty, valid UTF-8, no
// NUL bytes; methods reject other keys with an error naming the key. Values
// are opaque bytes; values returned are the caller's own copies.
// All methods are safe for concurrent use.
type Store interface {
	// Get returns the entry for key, or ErrNotFound.
	Get(ctx context.Context, key string) (Entry, error)
	// List returns every entry whose key starts with prefix, sorted by key
	// (byte order). When nothing matches it returns an empty, non-nil slice.
	List(ctx context.Context, prefix string) ([]Entry, error)
	// Put writes key. With expect == AnyRev it always writes; with expect == 0
	// it writes only if the key does not exist; otherwise only if the key's
	// current Rev equals expect. A failed condition returns ErrConflict.
	// It returns the new revision.
	Put(ctx context.Context, key string, value []byte, expect int64) (int64, error)
	// Delete removes key, under the same condition rules as Put (expect 0 is
	// not meaningful and returns ErrConflict). Deleting a missing key returns
	// ErrNotFound, whatever expect is. A delete takes a revision of its own.
	Delete(ctx context.Context, key string, expect int64) error
	// Watch sends every change to keys under prefix made after the call, in
	// revision order, until ctx ends or the store is closed; then the
	// channel is closed. A watcher that falls too far behind is closed
	// early; the caller re-lists and watches again.
	Watch(ctx context.Context, prefix string) (<-chan Event, error)
	// Close releases the store. Later calls return ErrClosed.
	Close() error
}
