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

// errorStop is an answer that retrying cannot change: retry returns it at once.
type errorStop struct{ error }
