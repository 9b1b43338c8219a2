// Command kvcheck runs etcd's official Go client (clientv3 and its concurrency recipes)
// against an etcd-API cluster and checks what it observes. tests/etcd_clients.rs runs it
// against a real etcd 3.4 (to prove the checks right) and against kvstore.
//
// Every observation is one line on stdout: a kind, then key=value fields
// ("watch-event seq=3 rev=12 member=2"). A broken rule prints a "violation kind=... " line,
// and the process exits 1 at the end; 0 means every check held; 2 is a usage or setup error.
//
// Subcommands:
//
//	mutex    --endpoints E --workers N --rounds R
//	elect    --endpoints E --candidates C --leaderships L --proclaims P [--pause-at K]
//	watch    --endpoints E --key K --count N [--pause-at K]
//	selftest (the checkers must catch planted bad histories; no cluster needed)
//
// With --pause-at K the program stops at a fixed point of its run, prints a "...-pause"
// line naming an endpoint, and reads one line from stdin before it goes on: the harness
// kills a member there. --sabotage plants a fault the checks must report.
//
// Built in GOPATH mode (GO111MODULE=off) against Debian's golang-etcd-server-dev, which
// puts the client at go.etcd.io/etcd/clientv3.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	"go.uber.org/zap"
)

// opTimeout bounds one client call; a call that fails for a transient reason (a killed
// member, a leader election) is retried until the run's deadline.
const opTimeout = 3 * time.Second

var (
	outMu      sync.Mutex
	violations int
)

// emit prints one observation line.
func emit(kind string, fields ...interface{}) {
	var b strings.Builder
	b.WriteString(kind)
	for i := 0; i+1 < len(fields); i += 2 {
		fmt.Fprintf(&b, " %v=%v", fields[i], fields[i+1])
	}
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Println(b.String())
}

// violation reports a broken rule; the process will exit 1.
func violation(kind string, detail string) {
	outMu.Lock()
	violations++
	outMu.Unlock()
	emit("violation", "kind", kind, "detail", strconv.Quote(detail))
}

// fatal reports a setup error and exits 2.
func fatal(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kvcheck: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		fatal("usage: kvcheck mutex|elect|watch|selftest [flags]")
	}
	cmd, args := os.Args[1], os.Args[2:]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	endpoints := fs.String("endpoints", "", "comma-separated client addresses (HOST:PORT)")
	timeout := fs.Duration("timeout", 60*time.Second, "the whole run's deadline")
	sabotage := fs.Bool("sabotage", false, "plant a fault the checks must report")
	pauseAt := fs.Int("pause-at", 0, "pause for the harness after this many steps (0: never)")
	workers := fs.Int("workers", 4, "mutex: contending clients")
	rounds := fs.Int("rounds", 5, "mutex: lock holds per worker")
	candidates := fs.Int("candidates", 3, "elect: campaigning clients")
	leaderships := fs.Int("leaderships", 8, "elect: leaderships to run in all")
	proclaims := fs.Int("proclaims", 2, "elect: values each leader proclaims after its campaign value")
	key := fs.String("key", "kvcheck/watched", "watch: the key written and watched")
	count := fs.Int("count", 100, "watch: puts to make")
	name := fs.String("name", "kvcheck", "mutex/elect: the lock or election prefix")
	if err := fs.Parse(args); err != nil {
		fatal("%v", err)
	}
	eps := splitEndpoints(*endpoints)
	if cmd != "selftest" && len(eps) == 0 {
		fatal("--endpoints is required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	switch cmd {
	case "mutex":
		runMutex(ctx, eps, *name, *workers, *rounds, *pauseAt, *sabotage)
	case "elect":
		runElect(ctx, eps, *name, *candidates, *leaderships, *proclaims, *pauseAt, *sabotage)
	case "watch":
		runWatch(ctx, eps, *key, *count, *pauseAt, *sabotage)
	case "selftest":
		runSelftest()
	default:
		fatal("unknown subcommand %q", cmd)
	}
	if ctx.Err() != nil {
		violation("timeout", fmt.Sprintf("the run did not finish within %v", *timeout))
	}
	emit("result", "ok", violations == 0, "violations", violations)
	if violations > 0 {
		os.Exit(1)
	}
}

func splitEndpoints(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// newClient connects to eps (the client balances over them and fails over by itself).
func newClient(eps []string) *clientv3.Client {
	logCfg := zap.NewProductionConfig()
	logCfg.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	logCfg.OutputPaths = []string{"stderr"}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: 5 * time.Second,
		LogConfig:   &logCfg,
	})
	if err != nil {
		fatal("connect to %v: %v", eps, err)
	}
	return c
}

// retry runs op with a per-call timeout until it succeeds or ctx ends. Only for calls that
// are safe to repeat (reads, compare-and-swaps whose repetition the caller recognises).
func retry(ctx context.Context, what string, op func(context.Context) error) error {
	for attempt := 0; ; attempt++ {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		err := op(octx)
		cancel()
		if err == nil {
			return nil
		}
		var stop errorStop
		if errors.As(err, &stop) {
			return fmt.Errorf("%s: %v", what, err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %v (last error: %v)", what, ctx.Err(), err)
		}
		if attempt > 0 && attempt%10 == 0 {
			fmt.Fprintf(os.Stderr, "kvcheck: %s still failing: %v\n", what, err)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// pause prints a "<kind>-pause" line and waits for one line on stdin.
func pause(kind string, fields ...interface{}) {
	emit(kind+"-pause", fields...)
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fatal("reading the harness's resume line: %v", err)
	}
	emit(kind + "-resume")
}

// endpointOf finds which of eps is the member with id (from a response header).
func endpointOf(ctx context.Context, c *clientv3.Client, eps []string, id uint64) (string, error) {
	for _, ep := range eps {
		sctx, cancel := context.WithTimeout(ctx, opTimeout)
		resp, err := c.Status(sctx, ep)
		cancel()
		if err == nil && resp.Header.MemberId == id {
			return ep, nil
		}
	}
	return "", fmt.Errorf("no endpoint of %v is member %x", eps, id)
}

// clearPrefix deletes what an earlier run left under prefix.
func clearPrefix(ctx context.Context, c *clientv3.Client, prefix string) {
	if err := retry(ctx, "reset", func(octx context.Context) error {
		_, err := c.Delete(octx, prefix, clientv3.WithPrefix())
		return err
	}); err != nil {
		fatal("%v", err)
	}
}

// ---------------------------------------------------------------------------------------
// mutex

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

// ---------------------------------------------------------------------------------------
// elect

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

// ---------------------------------------------------------------------------------------
// watch

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

// errorStop is an answer that retrying cannot change: retry returns it at once.
type errorStop struct{ error }

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

// ---------------------------------------------------------------------------------------
// selftest

// runSelftest feeds each checker good and planted bad histories: a checker that passes a
// bad one is broken, and that is a violation.
func runSelftest() {
	expect := func(name string, msg string, bad bool) {
		caught := msg != ""
		emit("selftest", "case", name, "caught", caught)
		if caught != bad {
			violation("selftest", fmt.Sprintf("%s: checker said %q", name, msg))
		}
	}
	expect("sequence-good", checkSequence([]int{1, 2, 3}, 3), false)
	expect("sequence-gap", checkSequence([]int{1, 3}, 3), true)
	expect("sequence-duplicate", checkSequence([]int{1, 2, 2, 3}, 3), true)
	expect("sequence-reorder", checkSequence([]int{2, 1, 3}, 3), true)
	expect("sequence-short", checkSequence([]int{1, 2}, 3), true)
	expect("sequence-extra", checkSequence([]int{1, 2, 3, 4}, 3), true)
	expect("counter-good", checkCounter(map[int64]int{0: 1, 1: 1, 2: 1}, 3, 3), false)
	expect("counter-lost", checkCounter(map[int64]int{0: 1, 1: 2}, 2, 3), true)
	expect("counter-final", checkCounter(map[int64]int{0: 1, 1: 1, 2: 1}, 2, 3), true)
	want := []string{"a-p0", "a-p1", "b-p0", "b-p1"}
	expect("observed-good", checkObserved(want, want), false)
	expect("observed-missed", checkObserved([]string{"a-p0", "b-p0", "b-p1"}, want), true)
	expect("observed-back", checkObserved([]string{"a-p0", "a-p1", "b-p0", "a-p1", "b-p1"}, want), true)
	expect("observed-swapped", checkObserved([]string{"a-p1", "a-p0", "b-p0", "b-p1"}, want), true)
}
