package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ModePresence: Clients connections join one room, then for Duration,
// every second, Churn of the members leave it and Churn others join it
// (with leave and join frames on open connections). Every member checks
// that it gets at most one presence_diff per second and, once the churn
// stops, that its count matches the truth.
const ModePresence = "presence"

// Presence is what a presence run measured.
type Presence struct {
	Members     int           `json:"members"` // in the room at the end
	Churn       int           `json:"churn_per_sec"`
	Joins       int64         `json:"joins"`  // join frames sent during the churn
	Leaves      int64         `json:"leaves"` // leave frames sent during the churn
	Diffs       int64         `json:"diffs"`  // presence_diff frames received, all connections
	Snapshots   int64         `json:"snapshots"`
	MinDiffGap  time.Duration `json:"min_diff_gap_ns"` // shortest time between two diffs to one connection
	FastDiffs   int64         `json:"fast_diffs"`      // diffs read less than 900 ms after the previous one by the same connection
	MaxDiffs    int64         `json:"max_diffs"`       // most diffs one connection received, over the whole run
	RunSeconds  float64       `json:"run_seconds"`     // from the first join to the end of the settling
	Settle      time.Duration `json:"settle_ns"`       // from the end of the churn until every member's count was right
	Wrong       int           `json:"wrong_counts"`    // members whose count was still wrong after Drain
	PerEventMsg int64         `json:"per_event_messages"`

	// With Config.KillPID: the members left on the other instances, and how
	// long after the kill the last of them had the right count (0: never,
	// within Drain).
	Survivors  int           `json:"survivors,omitempty"`
	KillSettle time.Duration `json:"kill_settle_ns,omitempty"`
}

// Typing is what the typists of a load run measured.
type Typing struct {
	Typists  int   `json:"typists"`
	Sent     int64 `json:"sent"`     // typing frames sent
	Received int64 `json:"received"` // typing frames received, all typists
}

// pmember is one connection of a presence run.
type pmember struct {
	name string
	ws   *wsConn

	mu       sync.Mutex
	joined   bool // a join was sent and no leave since
	dead     bool // its connection ended
	count    int64
	diffs    int64
	lastDiff int64 // ns since the run's start
	pending  bool  // a join is on its way: its snapshot resets count
}

func (r *runner) presence(ctx context.Context) error {
	cfg := &r.cfg
	room := cfg.RoomPrefix + "-presence"
	res := &Presence{Churn: cfg.Churn, MinDiffGap: time.Hour}
	r.res.Presence = res
	members := make([]*pmember, cfg.Clients)
	var diffs, snapshots, fast atomic.Int64
	var minGap atomic.Int64
	minGap.Store(int64(time.Hour))
	var readers sync.WaitGroup
	defer func() {
		for _, m := range members {
			if m != nil && m.ws != nil {
				m.ws.close()
			}
		}
		readers.Wait()
	}()
	r.phase.Store("connecting")
	before := r.sampleServers()
	t0 := time.Now()
	var connected atomic.Int64
	progressCtx, stopProgress := context.WithCancel(ctx)
	defer stopProgress()
	go r.progress(progressCtx, func() string {
		return fmt.Sprintf("connected %d, diffs %d", connected.Load(), diffs.Load())
	})
	err := r.dialAll(ctx, cfg.Clients, func(ctx context.Context, i int) error {
		m := &pmember{name: fmt.Sprintf("%s-p%d", cfg.RoomPrefix, i)}
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		ws, err := dialWS(dctx, r.wsURL(i, m.name), cfg.Header, 4<<10)
		if err != nil {
			return err
		}
		m.ws = ws
		members[i] = m
		if _, err := ws.next(); err != nil { // welcome
			return err
		}
		m.mu.Lock()
		m.joined, m.pending = true, true
		m.mu.Unlock()
		if err := ws.writeText([]byte(`{"type":"join","room":"` + room + `"}`)); err != nil {
			return err
		}
		connected.Add(1)
		readers.Go(func() {
			var f frame
			for {
				data, err := ws.next()
				if err != nil {
					m.mu.Lock()
					m.dead = true
					m.mu.Unlock()
					return
				}
				if !scanFrame(data, &f) {
					continue
				}
				now := r.now()
				switch string(f.typ) {
				case "presence":
					snapshots.Add(1)
					m.mu.Lock()
					m.count, m.pending, m.lastDiff = f.count, false, 0 // a diff may follow a snapshot at once
					m.mu.Unlock()
				case "presence_diff":
					diffs.Add(1)
					m.mu.Lock()
					if m.lastDiff > 0 {
						gap := now - m.lastDiff
						if gap < int64(900*time.Millisecond) {
							fast.Add(1)
						}
						for {
							old := minGap.Load()
							if gap >= old || minGap.CompareAndSwap(old, gap) {
								break
							}
						}
					}
					m.count, m.lastDiff = f.count, now
					m.diffs++
					m.mu.Unlock()
				case "error":
					r.countError(f.code)
				}
			}
		})
		return nil
	})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	r.res.Connect = time.Since(t0)

	// Let the joins settle before measuring.
	if !r.settle(ctx, members, cfg.Drain) {
		return fmt.Errorf("presence never settled after the joins")
	}
	r.phase.Store("churning")
	from, cpu0 := r.sampleServers(), selfCPU()
	w0 := time.Now()
	var out []*pmember // left, ready to join again
	tick := time.NewTicker(time.Second / 10)
	defer tick.Stop()
	perTick := max(1, cfg.Churn/10)
	for time.Since(w0) < cfg.Duration && ctx.Err() == nil {
		<-tick.C
		// Leaves first, from the members; then joins, of those that left
		// at least one tick ago.
		back := out
		out = nil
		for range perTick {
			m := members[rand.IntN(len(members))]
			m.mu.Lock()
			ok := m.joined && !m.pending
			if ok {
				m.joined = false
			}
			m.mu.Unlock()
			if ok && m.ws.writeText([]byte(`{"type":"leave","room":"`+room+`"}`)) == nil {
				res.Leaves++
				out = append(out, m)
			}
		}
		for _, m := range back {
			m.mu.Lock()
			m.joined, m.pending = true, true
			m.mu.Unlock()
			if m.ws.writeText([]byte(`{"type":"join","room":"`+room+`"}`)) == nil {
				res.Joins++
			}
		}
	}
	for _, m := range out { // end with everyone back
		m.mu.Lock()
		m.joined, m.pending = true, true
		m.mu.Unlock()
		if m.ws.writeText([]byte(`{"type":"join","room":"`+room+`"}`)) == nil {
			res.Joins++
		}
	}
	wall := time.Since(w0)
	to, cpu1 := r.sampleServers(), selfCPU()
	r.res.Duration = wall
	r.res.BenchCPU = float64(cpu1-cpu0) / float64(wall)
	r.serverStats(before, from, to, wall)

	r.phase.Store("settling")
	s0 := time.Now()
	if r.settle(ctx, members, cfg.Drain) {
		res.Settle = time.Since(s0)
	}
	for _, m := range members {
		m.mu.Lock()
		if m.joined && (m.pending || m.count != int64(len(members))) {
			res.Wrong++
		}
		m.mu.Unlock()
	}
	if cfg.KillPID != 0 {
		r.phase.Store("killed")
		if err := killProcess(cfg.KillPID); err != nil {
			return fmt.Errorf("kill %d: %w", cfg.KillPID, err)
		}
		k0 := time.Now()
		// The killed instance's members see their connections end at
		// once; wait for that to be over before checking the others.
		dead, stable := 0, time.Now()
		for time.Since(k0) < 10*time.Second && (dead == 0 || time.Since(stable) < 500*time.Millisecond) {
			n := 0
			for _, m := range members {
				m.mu.Lock()
				if m.dead {
					n++
				}
				m.mu.Unlock()
			}
			if n != dead {
				dead, stable = n, time.Now()
			}
			time.Sleep(20 * time.Millisecond)
		}
		if r.settle(ctx, members, cfg.Drain) {
			res.KillSettle = time.Since(k0)
		}
		for _, m := range members {
			m.mu.Lock()
			if !m.dead {
				res.Survivors++
			}
			m.mu.Unlock()
		}
	}
	stopProgress()
	res.RunSeconds = time.Since(t0).Seconds()
	for _, m := range members {
		m.mu.Lock()
		res.MaxDiffs = max(res.MaxDiffs, m.diffs)
		m.mu.Unlock()
	}
	res.Members = len(members)
	res.Diffs, res.Snapshots, res.FastDiffs = diffs.Load(), snapshots.Load(), fast.Load()
	res.MinDiffGap = time.Duration(minGap.Load())
	// What per-event presence would have sent: every join and leave to
	// every member.
	res.PerEventMsg = (res.Joins + res.Leaves) * int64(len(members))
	return nil
}

// settle waits until every joined member that is still connected counts
// every such member, or for up to timeout.
func (r *runner) settle(ctx context.Context, members []*pmember, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var alive int64
		for _, m := range members {
			m.mu.Lock()
			if !m.dead {
				alive++
			}
			m.mu.Unlock()
		}
		done := true
		for _, m := range members {
			m.mu.Lock()
			ok := m.dead || !m.joined || (!m.pending && m.count == alive)
			m.mu.Unlock()
			if !ok {
				done = false
				break
			}
		}
		if done {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// startTypists connects cfg.Typists more connections to a room of their
// own, each sending a typing frame once per second (at a random phase)
// until stop is closed, and counting the typing frames they receive. The
// returned function waits for them and records the result.
func (r *runner) startTypists(ctx context.Context, stop <-chan struct{}) (func(), error) {
	runCtx := ctx // dialAll's context ends when it returns
	cfg := &r.cfg
	if cfg.Typists == 0 {
		return func() {}, nil
	}
	room := cfg.RoomPrefix + "-typing"
	typing := []byte(`{"type":"typing","room":"` + room + `"}`)
	res := &Typing{Typists: cfg.Typists}
	r.res.Typing = res
	var sent, received atomic.Int64
	conns := make([]*wsConn, cfg.Typists)
	var wg sync.WaitGroup
	err := r.dialAll(ctx, cfg.Typists, func(ctx context.Context, i int) error {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		ws, err := dialWS(dctx, r.wsURL(i, fmt.Sprintf("%s-t%d", cfg.RoomPrefix, i)), cfg.Header, 4<<10)
		if err != nil {
			return err
		}
		conns[i] = ws
		if _, err := ws.next(); err != nil {
			return err
		}
		if err := ws.writeText([]byte(`{"type":"join","room":"` + room + `"}`)); err != nil {
			return err
		}
		wg.Go(func() {
			var f frame
			for {
				data, err := ws.next()
				if err != nil {
					return
				}
				if scanFrame(data, &f) && string(f.typ) == "typing" {
					received.Add(1)
				}
			}
		})
		wg.Go(func() {
			t := time.NewTimer(rand.N(time.Second))
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-runCtx.Done():
					return
				case <-t.C:
				}
				if ws.writeText(typing) == nil {
					sent.Add(1)
				}
				t.Reset(time.Second)
			}
		})
		return nil
	})
	done := func() {
		for _, ws := range conns {
			if ws != nil {
				ws.close()
			}
		}
		wg.Wait()
		res.Sent, res.Received = sent.Load(), received.Load()
	}
	if err != nil {
		done()
		return nil, fmt.Errorf("typists: %w", err)
	}
	return done, nil
}

// killProcess sends SIGKILL (kill -9) to pid.
func killProcess(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Signal(os.Kill)
}
