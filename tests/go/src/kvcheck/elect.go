package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

// observed is what the observer has seen, for the candidates to wait on.
type observed struct {
	mu     sync.Mutex
	cond   *sync.Cond
	values []string // every value, consecutive repeats collapsed
	last   string
}

func (o *observed) add(v string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if v != o.last {
		o.values = append(o.values, v)
		o.last = v
	}
	o.cond.Broadcast()
}

// waitFor blocks until the observer's latest value is v, or ctx ends.
func (o *observed) waitFor(ctx context.Context, v string) bool {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			o.mu.Lock()
			o.cond.Broadcast()
			o.mu.Unlock()
		case <-stop:
		}
	}()
	o.mu.Lock()
	defer o.mu.Unlock()
	for o.last != v && ctx.Err() == nil {
		o.cond.Wait()
	}
	return o.last == v
}

// runElect: candidates, each with its own client and session, campaign on one
// concurrency.Election; a winner proclaims further values and resigns, until leaderships
// leaderships have run. An observer (its own client) follows Observe. Checks: no candidate
// wins while another holds (at most one leader at a time), and the observer sees every
// value of every leader (campaign value, then each proclaimed one) in order, each
// leadership after the previous one, nothing else. Each leader waits for the observer to
// see a value before it moves on, so a lost event shows as a value never seen.
func runElect(ctx context.Context, eps []string, name string, candidates, leaderships, proclaims, pauseAt int, sabotage bool) {
	prefix := name + "/election"
	setup := newClient(eps)
	defer setup.Close()
	clearPrefix(ctx, setup, name+"/")

	obs := &observed{}
	obs.cond = sync.NewCond(&obs.mu)
	octx, stopObserver := context.WithCancel(ctx)
	observerDone := make(chan struct{})
	oc := newClient(eps)
	defer oc.Close()
	os_, err := concurrency.NewSession(oc, concurrency.WithTTL(10))
	if err != nil {
		fatal("observer session: %v", err)
	}
	defer os_.Close()
	go func() {
		defer close(observerDone)
		e := concurrency.NewElection(os_, prefix)
		var lastCreate int64
		for octx.Err() == nil {
			// Observe closes its channel when a call fails (a killed member): start again.
			for resp := range e.Observe(octx) {
				if len(resp.Kvs) == 0 {
					continue
				}
				kv := resp.Kvs[0]
				if kv.CreateRevision < lastCreate {
					violation("leader-went-back", fmt.Sprintf("observed leader key created at %d after one created at %d", kv.CreateRevision, lastCreate))
				}
				lastCreate = kv.CreateRevision
				emit("elect-observe", "value", string(kv.Value), "create_rev", kv.CreateRevision, "mod_rev", kv.ModRevision)
				obs.add(string(kv.Value))
			}
		}
	}()

	var mu sync.Mutex
	holder := ""          // the candidate that believes it leads now
	var expected []string // every value the leaders set, in order
	won := 0
	paused := false
	var finalResign func() // the last leader resigns only after every other candidate stopped
	cctx, stopCandidates := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var rogueTried chan struct{}
	if sabotage {
		rogueTried = make(chan struct{})
	}
	for cand := 0; cand < candidates; cand++ {
		wg.Add(1)
		go func(cand int) {
			defer wg.Done()
			c := newClient(rotate(eps, cand))
			s, err := concurrency.NewSession(c, concurrency.WithTTL(10))
			if err != nil {
				violation("session", fmt.Sprintf("candidate %d: %v", cand, err))
				c.Close()
				return
			}
			closeAll := func() { s.Close(); c.Close() }
			myPrefix := prefix
			rogue := sabotage && cand == candidates-1
			if rogue {
				// A second election prefix: this candidate "wins" while another leads, as a
				// broken election would let it. It campaigns once the real one has a leader.
				myPrefix = prefix + "-rogue"
				firstValue(obs)
			}
			e := concurrency.NewElection(s, myPrefix)
			// attempt counts leaderships won; a failed campaign is retried with its value.
			for attempt := 0; cctx.Err() == nil; attempt++ {
				value := fmt.Sprintf("c%d-a%d-p0", cand, attempt)
				if err := e.Campaign(cctx, value); err != nil {
					if cctx.Err() != nil {
						break
					}
					fmt.Fprintf(os.Stderr, "kvcheck: candidate %d campaign: %v\n", cand, err)
					attempt--
					continue
				}
				mu.Lock()
				if holder != "" {
					mu.Unlock()
					violation("two-leaders", fmt.Sprintf("candidate %d won while %s leads", cand, holder))
					if rogue {
						close(rogueTried)
						break
					}
					continue
				}
				holder = fmt.Sprintf("candidate %d", cand)
				expected = append(expected, value)
				won++
				n := won
				mu.Unlock()
				emit("elect-leader", "candidate", cand, "value", value, "key", e.Key(), "create_rev", e.Rev(), "n", n)
				ok := obs.waitFor(cctx, value)
				if sabotage && n == 1 {
					select {
					case <-rogueTried:
					case <-cctx.Done():
					}
				}
				mu.Lock()
				doPause := pauseAt > 0 && n == pauseAt && !paused
				paused = paused || doPause
				mu.Unlock()
				if doPause {
					pause("elect", "candidate", cand, "n", n)
				}
				for p := 1; p <= proclaims && ok; p++ {
					value = fmt.Sprintf("c%d-a%d-p%d", cand, attempt, p)
					mu.Lock()
					expected = append(expected, value)
					mu.Unlock()
					if err := retry(cctx, "proclaim", func(c context.Context) error {
						err := e.Proclaim(c, value)
						if errors.Is(err, concurrency.ErrElectionNotLeader) {
							return errorStop{err}
						}
						return err
					}); err != nil {
						violation("proclaim", fmt.Sprintf("candidate %d: %v", cand, err))
						ok = false
						break
					}
					emit("elect-proclaim", "candidate", cand, "value", value)
					ok = obs.waitFor(cctx, value)
				}
				if !ok && cctx.Err() == nil {
					violation("not-observed", fmt.Sprintf("the observer never saw %s", value))
				}
				resign := func() {
					key, rev := e.Key(), e.Rev()
					if err := e.Resign(ctx); err != nil {
						// Resign forgets the key even when its call failed: delete it here.
						if err := retry(ctx, "resign", func(c context.Context) error {
							_, err := s.Client().Txn(c).
								If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
								Then(clientv3.OpDelete(key)).Commit()
							return err
						}); err != nil {
							violation("resign", fmt.Sprintf("candidate %d: %v", cand, err))
						}
					}
					emit("elect-resign", "candidate", cand, "n", n)
				}
				mu.Lock()
				holder = ""
				last := won >= leaderships
				if last {
					finalResign = func() { resign(); closeAll() }
				}
				mu.Unlock()
				if last {
					stopCandidates()
					return
				}
				resign()
			}
			closeAll()
		}(cand)
	}
	wg.Wait()
	stopCandidates()
	if finalResign != nil {
		finalResign()
	}
	stopObserver()
	<-observerDone
	obs.mu.Lock()
	got := append([]string(nil), obs.values...)
	obs.mu.Unlock()
	if msg := checkObserved(got, expected); msg != "" {
		violation("observed-order", msg)
	}
	emit("elect-done", "leaderships", won, "values", len(expected))
}

// firstValue is a value the observer has already seen (or "" before any).
func firstValue(o *observed) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	for o.last == "" {
		o.cond.Wait()
	}
	return o.last
}

func rotate(eps []string, by int) []string {
	out := make([]string, 0, len(eps))
	for i := range eps {
		out = append(out, eps[(i+by)%len(eps)])
	}
	return out
}

// checkObserved: what the observer saw (consecutive repeats collapsed) is exactly the
// values the leaders set, in order; "" when so.
func checkObserved(got, want []string) string {
	for i := 0; i < len(got) || i < len(want); i++ {
		switch {
		case i >= len(got):
			return fmt.Sprintf("observer saw %d values, missing %q onwards", len(got), want[i])
		case i >= len(want):
			return fmt.Sprintf("observer saw %q after the last value set", got[i])
		case got[i] != want[i]:
			return fmt.Sprintf("observer's value %d is %q, the leaders set %q", i, got[i], want[i])
		}
	}
	return ""
}
