package main

import (
	"context"
	"fmt"
	"strconv"

	"go.etcd.io/etcd/clientv3"
)

// runWatch: a watcher watches key from the next revision on; a writer puts 1..count
// (exactly once each: a compare-and-swap on the previous value, re-read after an
// ambiguous failure). The watcher must see every value exactly once, in order, with rising
// revisions, also when the member it is connected to dies (the client resumes from the
// last revision seen + 1 by itself). With --pause-at K the writer stops after K puts the
// watcher has seen and names the watcher's member for the harness to kill.
func runWatch(ctx context.Context, eps []string, key string, count, pauseAt int, sabotage bool) {
	wc := newClient(eps)
	defer wc.Close()
	var startRev int64
	if err := retry(ctx, "reset", func(c context.Context) error {
		resp, err := wc.Delete(c, key)
		if err == nil {
			startRev = resp.Header.Revision + 1
		}
		return err
	}); err != nil {
		fatal("%v", err)
	}
	wch := wc.Watch(ctx, key, clientv3.WithRev(startRev), clientv3.WithCreatedNotify())
	first, ok := <-wch
	if !ok || !first.Created {
		fatal("watch was not created: %v", first.Err())
	}
	member := first.Header.MemberId
	watcherEp, err := endpointOf(ctx, wc, eps, member)
	if err != nil {
		fatal("%v", err)
	}
	emit("watch-created", "endpoint", watcherEp, "member", fmt.Sprintf("%x", member), "start_rev", startRev)

	seenUpTo := make(chan int, count+1)
	watcherDone := make(chan struct{})
	var got []int
	go func() {
		defer close(watcherDone)
		var lastRev int64
		for len(got) < count || (sabotage && len(got) < count+1) {
			wr, ok := <-wch
			if !ok {
				violation("watch-closed", fmt.Sprintf("the watch ended after %d events", len(got)))
				return
			}
			if err := wr.Err(); err != nil {
				violation("watch-error", err.Error())
				return
			}
			for _, ev := range wr.Events {
				if ev.Type != clientv3.EventTypePut {
					violation("unexpected-event", fmt.Sprintf("%v at revision %d", ev.Type, ev.Kv.ModRevision))
					continue
				}
				seq, err := strconv.Atoi(string(ev.Kv.Value))
				if err != nil {
					violation("bad-value", string(ev.Kv.Value))
					continue
				}
				if ev.Kv.ModRevision <= lastRev {
					violation("revision-order", fmt.Sprintf("event at revision %d after one at %d", ev.Kv.ModRevision, lastRev))
				}
				lastRev = ev.Kv.ModRevision
				got = append(got, seq)
				emit("watch-event", "seq", seq, "rev", ev.Kv.ModRevision, "member", fmt.Sprintf("%x", wr.Header.MemberId))
				seenUpTo <- seq
			}
		}
	}()

	// The writer avoids the watcher's member: only the watch should feel its death.
	var writerEps []string
	for _, ep := range eps {
		if ep != watcherEp {
			writerEps = append(writerEps, ep)
		}
	}
	if len(writerEps) == 0 {
		writerEps = eps
	}
	writer := newClient(writerEps)
	defer writer.Close()
	seen := 0
	waitSeen := func(seq int) bool {
		for seen < seq {
			select {
			case s := <-seenUpTo:
				if s > seen {
					seen = s
				}
			case <-watcherDone:
				return false
			case <-ctx.Done():
				return false
			}
		}
		return true
	}
	for seq := 1; seq <= count && ctx.Err() == nil; seq++ {
		if err := putOnce(ctx, writer, key, seq); err != nil {
			violation("put", err.Error())
			break
		}
		if sabotage && seq == count/2 {
			// a second put of the same value: the watcher must call it a duplicate
			if err := retry(ctx, "duplicate put", func(c context.Context) error {
				_, err := writer.Put(c, key, strconv.Itoa(seq))
				return err
			}); err != nil {
				violation("put", err.Error())
			}
		}
		if pauseAt > 0 && seq == pauseAt {
			if !waitSeen(seq) {
				break
			}
			pause("watch", "endpoint", watcherEp, "seq", seq)
		}
	}
	select {
	case <-watcherDone:
	case <-ctx.Done():
	}
	if msg := checkSequence(got, count); msg != "" {
		violation("sequence", msg)
	}
	emit("watch-done", "events", len(got), "count", count)
}

// putOnce sets key from seq-1 to seq exactly once (a lost answer is resolved by reading).
func putOnce(ctx context.Context, c *clientv3.Client, key string, seq int) error {
	prev := clientv3.Compare(clientv3.Value(key), "=", strconv.Itoa(seq-1))
	if seq == 1 {
		prev = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	return retry(ctx, fmt.Sprintf("put %d", seq), func(octx context.Context) error {
		resp, err := c.Txn(octx).If(prev).Then(clientv3.OpPut(key, strconv.Itoa(seq))).
			Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			return nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) > 0 && string(kvs[0].Value) == strconv.Itoa(seq) {
			return nil // an earlier attempt took effect
		}
		return errorStop{fmt.Errorf("key %s holds %v, neither %d nor %d", key, kvs, seq-1, seq)}
	})
}

// checkSequence: got is exactly 1..count; "" when so.
func checkSequence(got []int, count int) string {
	for i, seq := range got {
		switch {
		case i >= count:
			return fmt.Sprintf("%d events for %d puts (extra %d)", len(got), count, seq)
		case seq == i:
			return fmt.Sprintf("event %d repeats %d", i+1, seq)
		case seq != i+1:
			return fmt.Sprintf("event %d is %d, want %d", i+1, seq, i+1)
		}
	}
	if len(got) < count {
		return fmt.Sprintf("%d events for %d puts: missing %d onwards", len(got), count, len(got)+1)
	}
	return ""
}
