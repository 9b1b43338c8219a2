package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

// runMutex: workers, each with its own client and session, take the same
// concurrency.Mutex rounds times. Inside, a worker (1) claims a "holder" key in a Txn
// guarded by m.IsOwner() and by the holder key being absent, (2) increments a counter with
// a plain read and put, (3) releases the holder key. A second holder inside at the same
// time shows as a taken holder key or a lost increment; the counter values read must be
// 0..workers*rounds-1, each once. With --pause-at K the K-th holder pauses inside, holding
// the lock, while the harness kills a member.
func runMutex(ctx context.Context, eps []string, name string, workers, rounds, pauseAt int, sabotage bool) {
	prefix := name + "/lock"
	holderKey := name + "/holder"
	counterKey := name + "/counter"
	setup := newClient(eps)
	defer setup.Close()
	clearPrefix(ctx, setup, name+"/")

	var mu sync.Mutex
	seen := map[int64]int{} // counter value read -> how many holders read it
	holds := 0
	// sabotage: worker 1 locks a mutex of its own prefix (two "holders" at once, as a
	// broken lock would give) while worker 0 waits inside until worker 1 has tried.
	inside := make(chan struct{})
	tried := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := newClient(eps)
			defer c.Close()
			s, err := concurrency.NewSession(c, concurrency.WithTTL(10))
			if err != nil {
				violation("session", fmt.Sprintf("worker %d: %v", w, err))
				return
			}
			defer s.Close()
			myPrefix := prefix
			if sabotage && w == 1 {
				myPrefix = prefix + "-rogue"
			}
			m := concurrency.NewMutex(s, myPrefix)
			for r := 0; r < rounds && ctx.Err() == nil; r++ {
				if sabotage && w == 1 && r == 0 {
					select {
					case <-inside:
					case <-ctx.Done():
						return
					}
				}
				if err := retry(ctx, "lock", m.Lock); err != nil {
					violation("lock", fmt.Sprintf("worker %d: %v", w, err))
					return
				}
				me := fmt.Sprintf("w%d-r%d", w, r)
				var claimed bool
				var other string
				err := retry(ctx, "claim", func(c context.Context) error {
					resp, err := s.Client().Txn(c).
						If(m.IsOwner(), clientv3.Compare(clientv3.CreateRevision(holderKey), "=", 0)).
						Then(clientv3.OpPut(holderKey, me, clientv3.WithLease(s.Lease()))).
						Else(clientv3.OpGet(holderKey)).Commit()
					if err != nil {
						return err
					}
					claimed = resp.Succeeded
					if !claimed {
						kvs := resp.Responses[0].GetResponseRange().Kvs
						if len(kvs) > 0 {
							other = string(kvs[0].Value)
						}
					}
					return nil
				})
				if err != nil {
					violation("claim", err.Error())
					return
				}
				// A retried claim that had taken effect finds its own name.
				if !claimed && other != me {
					if other == "" {
						violation("not-owner", fmt.Sprintf("%s holds the lock but IsOwner() is false", me))
					} else {
						violation("overlap", fmt.Sprintf("%s got the lock while %s was inside", me, other))
					}
				}
				if sabotage && w == 0 && r == 0 {
					close(inside)
					select {
					case <-tried:
					case <-ctx.Done():
					}
				}
				if sabotage && w == 1 && r == 0 {
					close(tried)
				}
				var value int64
				if err := retry(ctx, "read counter", func(c context.Context) error {
					resp, err := s.Client().Get(c, counterKey)
					if err != nil {
						return err
					}
					value = 0
					if len(resp.Kvs) > 0 {
						value, err = strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
					}
					return err
				}); err != nil {
					violation("counter", err.Error())
					return
				}
				mu.Lock()
				seen[value]++
				holds++
				n := holds
				mu.Unlock()
				emit("mutex-hold", "worker", w, "round", r, "counter", value, "lock_rev", m.Header().Revision, "n", n)
				if pauseAt > 0 && n == pauseAt {
					pause("mutex", "worker", w, "n", n)
				}
				// A plain put: with two holders inside, one increment is lost.
				if err := retry(ctx, "write counter", func(c context.Context) error {
					_, err := s.Client().Put(c, counterKey, strconv.FormatInt(value+1, 10))
					return err
				}); err != nil {
					violation("counter", err.Error())
					return
				}
				if claimed || other == me {
					if err := retry(ctx, "release holder", func(c context.Context) error {
						_, err := s.Client().Txn(c).
							If(clientv3.Compare(clientv3.Value(holderKey), "=", me)).
							Then(clientv3.OpDelete(holderKey)).Commit()
						return err
					}); err != nil {
						violation("release", err.Error())
						return
					}
				}
				if err := retry(ctx, "unlock", m.Unlock); err != nil {
					violation("unlock", fmt.Sprintf("worker %d: %v", w, err))
					return
				}
			}
		}(w)
	}
	wg.Wait()

	var final int64
	if err := retry(ctx, "final counter", func(c context.Context) error {
		resp, err := setup.Get(c, counterKey)
		if err != nil {
			return err
		}
		if len(resp.Kvs) > 0 {
			final, err = strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
		}
		return err
	}); err != nil {
		violation("counter", err.Error())
	}
	want := int64(workers * rounds)
	if msg := checkCounter(seen, final, want); msg != "" {
		violation("lost-update", msg)
	}
	emit("mutex-done", "holds", holds, "counter", final)
}

// checkCounter: the values read under the lock are exactly 0..holds-1, once each, and the
// counter ends at holds. "" when that holds.
func checkCounter(seen map[int64]int, final, holds int64) string {
	for v := int64(0); v < holds; v++ {
		if seen[v] != 1 {
			return fmt.Sprintf("counter value %d was read by %d holders (want 1)", v, seen[v])
		}
	}
	if int64(len(seen)) != holds || final != holds {
		return fmt.Sprintf("counter is %d after %d holds (%d distinct values read)", final, holds, len(seen))
	}
	return ""
}
