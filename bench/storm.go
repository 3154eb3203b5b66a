package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// joinStorm runs ModeJoinStorm: it fills a room with History messages,
// connects Clients connections, then has them all join the room with
// since=0 at once, and measures how long each replay takes.
func (r *runner) joinStorm(ctx context.Context) error {
	cfg := &r.cfg
	name := cfg.RoomPrefix + "-0"
	r.phase.Store("filling")
	if err := r.fill(ctx, name); err != nil {
		return fmt.Errorf("fill %s: %w", name, err)
	}

	r.phase.Store("connecting")
	conns := make([]*wsConn, cfg.Clients)
	defer func() {
		for _, ws := range conns {
			if ws != nil {
				ws.close()
			}
		}
	}()
	var connected, joined, replayed atomic.Int64
	progressCtx, stopProgress := context.WithCancel(ctx)
	defer stopProgress()
	go r.progress(progressCtx, func() string {
		return fmt.Sprintf("conns %d  joined %d  replayed %d", connected.Load(), joined.Load(), replayed.Load())
	})
	before := r.sampleServers()
	t0 := time.Now()
	err := r.dialAll(ctx, cfg.Clients, func(ctx context.Context, i int) error {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		ws, err := dialWS(dctx, r.wsURL(i, fmt.Sprintf("%s-c%d", cfg.RoomPrefix, i)), cfg.Header, 32<<10)
		if err != nil {
			return err
		}
		conns[i] = ws
		data, err := ws.next()
		if err != nil {
			return err
		}
		var f frame
		if !scanFrame(data, &f) || string(f.typ) != "welcome" {
			return fmt.Errorf("first frame %.100s, want welcome", data)
		}
		connected.Add(1)
		return nil
	})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	r.res.Connect = time.Since(t0)

	r.phase.Store("joining")
	storm := &JoinStorm{History: cfg.History}
	r.res.JoinStorm = storm
	join := []byte(`{"type":"join","room":"` + name + `","since":0}`)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		joins  hist
		last   time.Time
		failed int
	)
	start := make(chan struct{})
	from, cpu0 := r.sampleServers(), selfCPU()
	for _, ws := range conns {
		wg.Go(func() {
			<-start
			sent := time.Now()
			stop := context.AfterFunc(ctx, func() { ws.nc.Close() })
			defer stop()
			ws.nc.SetReadDeadline(sent.Add(cfg.Drain + time.Minute))
			n, ok := replay(ws, join, int64(cfg.History), &replayed)
			done := time.Now()
			joined.Add(1)
			mu.Lock()
			defer mu.Unlock()
			joins.record(int64(done.Sub(sent)))
			if done.After(last) {
				last = done
			}
			storm.Replayed += n
			if !ok {
				failed++
			}
		})
	}
	w0 := time.Now()
	close(start)
	wg.Wait()
	wall := time.Since(w0)
	to, cpu1 := r.sampleServers(), selfCPU()
	stopProgress()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	storm.Joins, storm.Total, storm.Failed = joins.summary(), last.Sub(w0), failed
	r.res.Duration = wall
	r.res.Deliveries = storm.Replayed
	r.res.DeliveriesPerSec = float64(storm.Replayed) / wall.Seconds()
	r.res.BenchCPU = float64(cpu1-cpu0) / float64(wall)
	r.serverStats(before, from, to, wall)
	return nil
}

// replay sends join and reads the replay up to joined; it reports the
// messages replayed and whether they were exactly seqs 1..want in order.
func replay(ws *wsConn, join []byte, want int64, replayed *atomic.Int64) (int64, bool) {
	if err := ws.writeText(join); err != nil {
		return 0, false
	}
	var (
		f    frame
		n    int64
		next int64 = 1
		ok         = true
	)
	for {
		data, err := ws.next()
		if err != nil || !scanFrame(data, &f) {
			return n, false
		}
		switch string(f.typ) {
		case "message":
			n++
			replayed.Add(1)
			if f.seq != next {
				ok = false
			}
			next = f.seq + 1
		case "joined":
			return n, ok && n == want && f.seq == want
		case "error":
			return n, false
		}
	}
}

// fill stores History messages in room through one connection, as fast as
// acks allow, and waits for the last ack.
func (r *runner) fill(ctx context.Context, room string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	ws, err := dialWS(ctx, r.wsURL(0, r.cfg.RoomPrefix+"-filler"), r.cfg.Header, 32<<10)
	if err != nil {
		return err
	}
	defer ws.close()
	stop := context.AfterFunc(ctx, func() { ws.nc.Close() })
	defer stop()
	if err := ws.writeText([]byte(`{"type":"join","room":"` + room + `"}`)); err != nil {
		return err
	}
	const window = 64
	var (
		f           frame
		sent, acked int
		retry       []int64 // refs refused with rate_limited, to resend
		body        = make([]byte, r.cfg.BodySize)
		buf         []byte
		joinedRoom  bool
		want        = r.cfg.History
	)
	for i := range body {
		body[i] = 'h'
	}
	write := func(n int64) error {
		buf = append(buf[:0], `{"type":"send","room":"`...)
		buf = append(buf, room...)
		buf = append(buf, `","body":"`...)
		buf = append(buf, body...)
		buf = append(buf, `","ref":"f`...)
		buf = strconv.AppendInt(buf, n, 10)
		buf = append(buf, `"}`...)
		return ws.writeText(buf)
	}
	for acked < want {
		for joinedRoom && len(retry) > 0 {
			if err := write(retry[0]); err != nil {
				return err
			}
			retry = retry[1:]
		}
		for joinedRoom && sent < want && sent-acked < window {
			if err := write(int64(sent)); err != nil {
				return err
			}
			sent++
		}
		data, err := ws.next()
		if err != nil {
			return err
		}
		if !scanFrame(data, &f) {
			continue
		}
		switch string(f.typ) {
		case "joined":
			if f.seq != 0 {
				return fmt.Errorf("room %s is not empty (head %d)", room, f.seq)
			}
			joinedRoom = true
		case "ack":
			acked++
		case "error":
			n, ok := leadingInt(f.ref[min(1, len(f.ref)):])
			if string(f.code) != "rate_limited" || !ok {
				return fmt.Errorf("%s: %s", f.code, f.message)
			}
			retry = append(retry, n)
			time.Sleep(50 * time.Millisecond) // the server's RATE_LIMIT: slow down
		}
	}
	return nil
}
