// Package storetest is the conformance suite for store.Store: every backend
// (the bbolt file, the etcd cluster) runs Run from its own tests and must pass.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/store"
)

// timeout bounds each subtest, so a hung backend fails instead of blocking.
const timeout = 30 * time.Second

// Run runs the conformance suite as subtests. open must return a new, empty,
// open store for each call; Run closes it when the subtest ends (Close is
// idempotent, so open may register its own cleanup too).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, s store.Store)
	}{
		{"GetMissing", testGetMissing},
		{"PutGet", testPutGet},
		{"EmptyValue", testEmptyValue},
		{"RevisionsIncrease", testRevisionsIncrease},
		{"CreateOnly", testCreateOnly},
		{"CompareAndSwap", testCompareAndSwap},
		{"Unconditional", testUnconditional},
		{"Delete", testDelete},
		{"InvalidKeys", testInvalidKeys},
		{"List", testList},
		{"ListEmpty", testListEmpty},
		{"Watch", testWatch},
		{"WatchOnlyLaterChanges", testWatchOnlyLaterChanges},
		{"WatchCancel", testWatchCancel},
		{"WatchOrderConcurrent", testWatchOrderConcurrent},
		{"ConcurrentCAS", testConcurrentCAS},
		{"NoAliasing", testNoAliasing},
		{"Closed", testClosed},
		{"Lease", testLease},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			ctx, cancel := context.WithTimeout(t.Context(), timeout)
			defer cancel()
			tt.fn(t, ctx, s)
		})
	}
}

func testGetMissing(t *testing.T, ctx context.Context, s store.Store) {
	_, err := s.Get(ctx, "missing/key")
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
	}
}

func testPutGet(t *testing.T, ctx context.Context, s store.Store) {
	rev := mustPut(t, ctx, s, "a/b", "hello", store.AnyRev)
	if rev <= 0 {
		t.Fatalf("Put returned rev %d, want > 0", rev)
	}
	e := mustGet(t, ctx, s, "a/b")
	want := store.Entry{Key: "a/b", Value: []byte("hello"), Rev: rev}
	if !entryEqual(e, want) {
		t.Fatalf("Get = %v, want %v", fmtEntry(e), fmtEntry(want))
	}
}

func testEmptyValue(t *testing.T, ctx context.Context, s store.Store) {
	rev := mustPut(t, ctx, s, "empty", "", store.AnyRev)
	e := mustGet(t, ctx, s, "empty")
	if len(e.Value) != 0 || e.Rev != rev {
		t.Fatalf("Get = %v, want empty value at rev %d", fmtEntry(e), rev)
	}
}

func testRevisionsIncrease(t *testing.T, ctx context.Context, s store.Store) {
	var last int64
	for i, key := range []string{"x", "y", "x", "z", "y", "x"} {
		rev := mustPut(t, ctx, s, key, strconv.Itoa(i), store.AnyRev)
		if rev <= last {
			t.Fatalf("write %d (%s): rev %d, not above previous %d", i, key, rev, last)
		}
		last = rev
		if e := mustGet(t, ctx, s, key); e.Rev != rev {
			t.Fatalf("Get(%s).Rev = %d, want %d", key, e.Rev, rev)
		}
	}
	// A delete takes a revision too: the next write lands above it.
	if err := s.Delete(ctx, "z", store.AnyRev); err != nil {
		t.Fatalf("Delete(z): %v", err)
	}
	if rev := mustPut(t, ctx, s, "w", "after delete", store.AnyRev); rev <= last+1 {
		t.Fatalf("Put after delete: rev %d, want > %d", rev, last+1)
	}
}

func testCreateOnly(t *testing.T, ctx context.Context, s store.Store) {
	rev := mustPut(t, ctx, s, "c", "first", 0)
	_, err := s.Put(ctx, "c", []byte("second"), 0)
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("create-only Put on existing key = %v, want ErrConflict", err)
	}
	if e := mustGet(t, ctx, s, "c"); string(e.Value) != "first" || e.Rev != rev {
		t.Fatalf("after failed create: %v, want first at rev %d", fmtEntry(e), rev)
	}
}

func testCompareAndSwap(t *testing.T, ctx context.Context, s store.Store) {
	rev1 := mustPut(t, ctx, s, "cas", "v1", 0)
	rev2 := mustPut(t, ctx, s, "cas", "v2", rev1)
	if rev2 <= rev1 {
		t.Fatalf("CAS rev %d, want > %d", rev2, rev1)
	}
	if _, err := s.Put(ctx, "cas", []byte("stale"), rev1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Put with stale rev = %v, want ErrConflict", err)
	}
	if e := mustGet(t, ctx, s, "cas"); string(e.Value) != "v2" || e.Rev != rev2 {
		t.Fatalf("after stale CAS: %v, want v2 at rev %d", fmtEntry(e), rev2)
	}
	if _, err := s.Put(ctx, "cas-missing", []byte("x"), rev2); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Put on missing key with rev = %v, want ErrConflict", err)
	}
	if _, err := s.Get(ctx, "cas-missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("failed CAS created the key: Get = %v", err)
	}
}

func testUnconditional(t *testing.T, ctx context.Context, s store.Store) {
	rev1 := mustPut(t, ctx, s, "u", "v1", store.AnyRev)
	rev2 := mustPut(t, ctx, s, "u", "v2", store.AnyRev)
	if rev2 <= rev1 {
		t.Fatalf("rev %d, want > %d", rev2, rev1)
	}
	if e := mustGet(t, ctx, s, "u"); string(e.Value) != "v2" || e.Rev != rev2 {
		t.Fatalf("Get = %v, want v2 at rev %d", fmtEntry(e), rev2)
	}
}

func testDelete(t *testing.T, ctx context.Context, s store.Store) {
	rev := mustPut(t, ctx, s, "d", "v", store.AnyRev)
	if err := s.Delete(ctx, "d", rev+1000); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Delete with wrong rev = %v, want ErrConflict", err)
	}
	if err := s.Delete(ctx, "d", 0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Delete with expect 0 = %v, want ErrConflict", err)
	}
	mustGet(t, ctx, s, "d")
	if err := s.Delete(ctx, "d", rev); err != nil {
		t.Fatalf("Delete with right rev: %v", err)
	}
	if _, err := s.Get(ctx, "d"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get after delete = %v, want ErrNotFound", err)
	}
	for _, expect := range []int64{store.AnyRev, rev} {
		if err := s.Delete(ctx, "d", expect); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Delete(missing, %d) = %v, want ErrNotFound", expect, err)
		}
	}
	mustPut(t, ctx, s, "d2", "v", store.AnyRev)
	if err := s.Delete(ctx, "d2", store.AnyRev); err != nil {
		t.Fatalf("unconditional Delete: %v", err)
	}
	if _, err := s.Get(ctx, "d2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get after unconditional delete = %v, want ErrNotFound", err)
	}
}

func testInvalidKeys(t *testing.T, ctx context.Context, s store.Store) {
	for _, key := range []string{"", "a\x00b", "bad\xffutf8"} {
		if _, err := s.Put(ctx, key, []byte("v"), store.AnyRev); err == nil {
			t.Errorf("Put(%q) succeeded, want an error", key)
		} else if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			t.Errorf("Put(%q) = %v, want an invalid-key error", key, err)
		}
		if _, err := s.Get(ctx, key); err == nil || errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get(%q) = %v, want an invalid-key error", key, err)
		}
		if err := s.Delete(ctx, key, store.AnyRev); err == nil || errors.Is(err, store.ErrNotFound) {
			t.Errorf("Delete(%q) = %v, want an invalid-key error", key, err)
		}
	}
}

func testList(t *testing.T, ctx context.Context, s store.Store) {
	revs := map[string]int64{}
	for _, key := range []string{"a/2", "ab/x", "a/10", "b/1", "a", "a/1", "a/1/deep"} {
		revs[key] = mustPut(t, ctx, s, key, "v:"+key, store.AnyRev)
	}
	cases := []struct {
		prefix string
		want   []string
	}{
		{"a/", []string{"a/1", "a/1/deep", "a/10", "a/2"}},
		{"a/1", []string{"a/1", "a/1/deep", "a/10"}},
		{"ab/", []string{"ab/x"}},
		{"a", []string{"a", "a/1", "a/1/deep", "a/10", "a/2", "ab/x"}},
		{"", []string{"a", "a/1", "a/1/deep", "a/10", "a/2", "ab/x", "b/1"}},
	}
	for _, c := range cases {
		got, err := s.List(ctx, c.prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", c.prefix, err)
		}
		var keys []string
		for _, e := range got {
			keys = append(keys, e.Key)
			if string(e.Value) != "v:"+e.Key || e.Rev != revs[e.Key] {
				t.Errorf("List(%q) entry %v, want value v:%s at rev %d", c.prefix, fmtEntry(e), e.Key, revs[e.Key])
			}
		}
		if !slices.Equal(keys, c.want) {
			t.Errorf("List(%q) keys = %q, want %q", c.prefix, keys, c.want)
		}
	}
}

func testListEmpty(t *testing.T, ctx context.Context, s store.Store) {
	mustPut(t, ctx, s, "ab/x", "v", store.AnyRev)
	for _, prefix := range []string{"a/", "zzz/"} {
		got, err := s.List(ctx, prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", prefix, err)
		}
		if got == nil || len(got) != 0 {
			t.Fatalf("List(%q) = %#v, want a non-nil empty slice", prefix, got)
		}
	}
}

func testWatch(t *testing.T, ctx context.Context, s store.Store) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := s.Watch(wctx, "w/")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	r1 := mustPut(t, ctx, s, "w/a", "1", store.AnyRev)
	mustPut(t, ctx, s, "other/x", "no", store.AnyRev)
	mustPut(t, ctx, s, "wx", "no", store.AnyRev) // shares "w" but not "w/"
	r2 := mustPut(t, ctx, s, "w/b", "2", store.AnyRev)
	r3 := mustPut(t, ctx, s, "w/a", "3", r1)
	if err := s.Delete(ctx, "w/b", r2); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	r5 := mustPut(t, ctx, s, "w/c", "5", 0)

	want := []store.Event{
		{Type: store.EventPut, Entry: store.Entry{Key: "w/a", Value: []byte("1"), Rev: r1}},
		{Type: store.EventPut, Entry: store.Entry{Key: "w/b", Value: []byte("2"), Rev: r2}},
		{Type: store.EventPut, Entry: store.Entry{Key: "w/a", Value: []byte("3"), Rev: r3}},
		{Type: store.EventDelete, Entry: store.Entry{Key: "w/b"}}, // Rev checked below
		{Type: store.EventPut, Entry: store.Entry{Key: "w/c", Value: []byte("5"), Rev: r5}},
	}
	for i, w := range want {
		ev := recv(t, ctx, ch)
		if w.Type == store.EventDelete {
			if ev.Type != store.EventDelete || ev.Entry.Key != w.Entry.Key || ev.Entry.Value != nil {
				t.Fatalf("event %d = %v, want delete of %s with nil value", i, fmtEvent(ev), w.Entry.Key)
			}
			if ev.Entry.Rev <= r3 || ev.Entry.Rev >= r5 {
				t.Fatalf("event %d: delete rev %d, want between %d and %d", i, ev.Entry.Rev, r3, r5)
			}
			continue
		}
		if ev.Type != w.Type || !entryEqual(ev.Entry, w.Entry) {
			t.Fatalf("event %d = %v, want %v", i, fmtEvent(ev), fmtEvent(w))
		}
	}
	cancel()
	expectClosed(t, ctx, ch)
}

func testWatchOnlyLaterChanges(t *testing.T, ctx context.Context, s store.Store) {
	mustPut(t, ctx, s, "p/before", "old", store.AnyRev)
	ch, err := s.Watch(ctx, "p/")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	rev := mustPut(t, ctx, s, "p/after", "new", store.AnyRev)
	ev := recv(t, ctx, ch)
	if ev.Type != store.EventPut || ev.Entry.Key != "p/after" || ev.Entry.Rev != rev {
		t.Fatalf("first event = %v, want put of p/after at rev %d", fmtEvent(ev), rev)
	}
}

func testWatchCancel(t *testing.T, ctx context.Context, s store.Store) {
	wctx, cancel := context.WithCancel(ctx)
	ch, err := s.Watch(wctx, "")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	cancel()
	expectClosed(t, ctx, ch)
	// Writes after the watcher ended must neither block nor panic.
	mustPut(t, ctx, s, "k", "v", store.AnyRev)
}

func testWatchOrderConcurrent(t *testing.T, ctx context.Context, s store.Store) {
	const writers, writes = 4, 50
	ch, err := s.Watch(ctx, "o/")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			key := "o/" + strconv.Itoa(w)
			for i := range writes {
				if _, err := s.Put(ctx, key, []byte(strconv.Itoa(i)), store.AnyRev); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	var last int64
	for i := range writers * writes {
		ev := recv(t, ctx, ch)
		if ev.Entry.Rev <= last {
			t.Fatalf("event %d: rev %d after %d, want increasing revisions", i, ev.Entry.Rev, last)
		}
		last = ev.Entry.Rev
	}
}

func testConcurrentCAS(t *testing.T, ctx context.Context, s store.Store) {
	const workers, increments = 8, 50
	mustPut(t, ctx, s, "counter", "0", 0)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range increments {
				if err := increment(ctx, s, "counter"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if e := mustGet(t, ctx, s, "counter"); string(e.Value) != strconv.Itoa(workers*increments) {
		t.Fatalf("counter = %s, want %d", e.Value, workers*increments)
	}
}

// increment adds one to the decimal counter at key, retrying on conflicts.
func increment(ctx context.Context, s store.Store, key string) error {
	for {
		e, err := s.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("get counter: %w", err)
		}
		n, err := strconv.Atoi(string(e.Value))
		if err != nil {
			return fmt.Errorf("parse counter %q: %w", e.Value, err)
		}
		_, err = s.Put(ctx, key, []byte(strconv.Itoa(n+1)), e.Rev)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("put counter: %w", err)
		}
		return nil
	}
}

func testNoAliasing(t *testing.T, ctx context.Context, s store.Store) {
	// Enough data that a backend cannot keep it all in small inline copies
	// (bbolt inlines small buckets but maps larger ones straight from disk).
	mustPut(t, ctx, s, "filler", strings.Repeat("f", 16<<10), store.AnyRev)
	ch1, err := s.Watch(ctx, "n/")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	ch2, err := s.Watch(ctx, "n/")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}

	in := []byte("value")
	mustPut(t, ctx, s, "n/k", string(in), store.AnyRev)
	if _, err := s.Put(ctx, "n/j", in, store.AnyRev); err != nil {
		t.Fatalf("Put: %v", err)
	}
	in[0] = 'X' // the caller's buffer is theirs again after Put

	e := mustGet(t, ctx, s, "n/j")
	if string(e.Value) != "value" {
		t.Fatalf("store kept the caller's buffer: Get = %q", e.Value)
	}
	e.Value[0] = 'X'
	list, err := s.List(ctx, "n/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for i := range list {
		list[i].Value[0] = 'Y'
	}
	for _, key := range []string{"n/j", "n/k"} {
		if e := mustGet(t, ctx, s, key); string(e.Value) != "value" {
			t.Fatalf("mutating returned values changed the store: Get(%s) = %q", key, e.Value)
		}
	}

	for range 2 {
		ev := recv(t, ctx, ch1)
		ev.Entry.Value[0] = 'Z'
	}
	for range 2 {
		if ev := recv(t, ctx, ch2); string(ev.Entry.Value) != "value" {
			t.Fatalf("watchers share event values: %v", fmtEvent(ev))
		}
	}
}

func testClosed(t *testing.T, ctx context.Context, s store.Store) {
	rev := mustPut(t, ctx, s, "k", "v", store.AnyRev)
	ch, err := s.Watch(ctx, "")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	expectClosed(t, ctx, ch)
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v, want nil", err)
	}
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", op, err)
		}
	}
	_, err = s.Get(ctx, "k")
	check("Get", err)
	_, err = s.List(ctx, "")
	check("List", err)
	_, err = s.Put(ctx, "k", []byte("v2"), rev)
	check("Put", err)
	check("Delete", s.Delete(ctx, "k", rev))
	_, err = s.Watch(ctx, "")
	check("Watch", err)
}

func mustPut(t *testing.T, ctx context.Context, s store.Store, key, value string, expect int64) int64 {
	t.Helper()
	rev, err := s.Put(ctx, key, []byte(value), expect)
	if err != nil {
		t.Fatalf("Put(%s, expect %d): %v", key, expect, err)
	}
	return rev
}

func mustGet(t *testing.T, ctx context.Context, s store.Store, key string) store.Entry {
	t.Helper()
	e, err := s.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	return e
}

// recv returns the next event, failing if none arrives before ctx ends or
// the channel closes.
func recv(t *testing.T, ctx context.Context, ch <-chan store.Event) store.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed, want an event")
		}
		return ev
	case <-ctx.Done():
		t.Fatalf("no watch event: %v", ctx.Err())
	}
	panic("unreachable")
}

// expectClosed drains ch until it is closed, failing if that does not
// happen before ctx ends.
func expectClosed(t *testing.T, ctx context.Context, ch <-chan store.Event) {
	t.Helper()
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-ctx.Done():
			t.Fatalf("watch channel not closed: %v", ctx.Err())
		}
	}
}

func entryEqual(a, b store.Entry) bool {
	return a.Key == b.Key && a.Rev == b.Rev && bytes.Equal(a.Value, b.Value)
}

func fmtEntry(e store.Entry) string {
	return fmt.Sprintf("{%s %q rev %d}", e.Key, e.Value, e.Rev)
}

func fmtEvent(ev store.Event) string {
	var kind string
	switch ev.Type {
	case store.EventPut:
		kind = "put"
	case store.EventDelete:
		kind = "delete"
	default:
		kind = fmt.Sprintf("type(%d)", ev.Type)
	}
	return kind + " " + fmtEntry(ev.Entry)
}

// testLease: keys put under a lease are ordinary keys to readers and
// watchers, and go away (with a delete event) when the lease is closed.
// Every backend implements store.Leaser.
func testLease(t *testing.T, ctx context.Context, s store.Store) {
	ls, ok := s.(store.Leaser)
	if !ok {
		t.Fatalf("%T does not implement store.Leaser", s)
	}
	mustPut(t, ctx, s, "members/keep", "not leased", store.AnyRev)
	ch, err := s.Watch(ctx, "members/")
	if err != nil {
		t.Fatal(err)
	}
	l, err := ls.Grant(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := l.Put(ctx, "members/a", []byte("alive"))
	if err != nil {
		t.Fatal(err)
	}
	if e := mustGet(t, ctx, s, "members/a"); string(e.Value) != "alive" || e.Rev != rev {
		t.Fatalf("leased key = %s, want alive at rev %d", fmtEntry(e), rev)
	}
	if ev := recv(t, ctx, ch); ev.Type != store.EventPut || ev.Entry.Key != "members/a" {
		t.Fatalf("watch saw %s, want the put of members/a", fmtEvent(ev))
	}
	select {
	case <-l.Done():
		t.Fatal("lease done before Close")
	default:
	}
	if err := l.Close(); err != nil {
		t.Fatalf("close lease: %v", err)
	}
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("Done not closed by Close")
	}
	if ev := recv(t, ctx, ch); ev.Type != store.EventDelete || ev.Entry.Key != "members/a" {
		t.Fatalf("watch saw %s, want the delete of members/a", fmtEvent(ev))
	}
	if _, err := s.Get(ctx, "members/a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("leased key after Close: err = %v, want ErrNotFound", err)
	}
	if e := mustGet(t, ctx, s, "members/keep"); string(e.Value) != "not leased" {
		t.Fatalf("unleased key changed: %s", fmtEntry(e))
	}
	if _, err := l.Put(ctx, "members/b", []byte("late")); err == nil {
		t.Fatal("put on a closed lease succeeded")
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}
