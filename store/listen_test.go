package store_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgchat/pgchat/store"
	"github.com/pgchat/pgchat/store/storetest"
)

// TestListenerReconnects kills the listening backend twice: each time the
// Listener must connect again, call OnListen again and deliver what is
// committed after that.
func TestListenerReconnects(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	url := storetest.NewDB(t)
	db := open(t, url, "app-1")
	admin := connect(t, url)

	listens := make(chan int, 10)
	payloads := make(chan string, 100)
	n := 0 // OnListen calls; only the Listen goroutine touches it
	l := &store.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, url) },
		OnListen: func(context.Context) {
			n++
			listens <- n
		},
		OnNotify: func(p string) {
			select {
			case payloads <- p:
			default:
				t.Errorf("more than %d notifications", cap(payloads))
			}
		},
		ReconnectDelay: 10 * time.Millisecond,
	}
	lctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- l.Listen(lctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Listen = %v, want nil", err)
		}
	}()

	waitListen := func(want int) {
		t.Helper()
		select {
		case got := <-listens:
			if got != want {
				t.Fatalf("OnListen call #%d, want #%d", got, want)
			}
		case <-ctx.Done():
			t.Fatalf("OnListen call #%d never came", want)
		}
		if !l.Connected() {
			t.Errorf("Connected() = false after OnListen, want true")
		}
	}

	waitListen(1)
	const kills = 2
	for round := 1; ; round++ {
		res, err := db.Append(ctx, []store.NewMessage{{Room: "r", Author: "alice", Body: strconv.Itoa(round)}})
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
		select {
		case p := <-payloads:
			note, err := store.DecodeNotification(p)
			if err != nil {
				t.Fatalf("DecodeNotification: %v", err)
			}
			if note.Room != "r" || len(note.Messages) != 1 || note.Messages[0].Seq != res[0].Seq || note.Messages[0].Body != strconv.Itoa(round) {
				t.Fatalf("round %d: notification %+v, want room r seq %d body %d", round, note, res[0].Seq, round)
			}
		case <-ctx.Done():
			t.Fatalf("round %d: no notification for seq %d", round, res[0].Seq)
		}
		if round > kills {
			break
		}

		rows, err := admin.Query(ctx, `
			select pg_terminate_backend(pid) from pg_stat_activity
			where datname = current_database() and query ilike 'listen%'`)
		if err != nil {
			t.Fatalf("terminate listener: %v", err)
		}
		killed, err := pgx.CollectRows(rows, pgx.RowTo[bool])
		if err != nil {
			t.Fatalf("terminate listener: %v", err)
		}
		if len(killed) != 1 || !killed[0] {
			t.Fatalf("pg_terminate_backend of the listening backends = %v, want [true]", killed)
		}
		waitListen(round + 1)
	}
	select {
	case got := <-listens:
		t.Errorf("OnListen call #%d, want %d calls", got, kills+1)
	default:
	}
}

// TestListenerStops checks that Listen returns nil promptly once ctx is
// cancelled, whatever it is doing.
func TestListenerStops(t *testing.T) {
	t.Parallel()
	url := storetest.NewDB(t)
	errRefused := errors.New("refused")
	for _, tc := range []struct {
		name    string
		connect func(ctx context.Context) (*pgx.Conn, error)
	}{
		{"listening", func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, url) }},
		// Between attempts: the backoff wait must give way to ctx.
		{"retrying", func(context.Context) (*pgx.Conn, error) { return nil, errRefused }},
		{"connecting", func(ctx context.Context) (*pgx.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			called := make(chan struct{}, 1)
			signal := func() {
				select {
				case called <- struct{}{}:
				default:
				}
			}
			l := &store.Listener{
				Connect: func(ctx context.Context) (*pgx.Conn, error) {
					if tc.name != "listening" {
						signal()
					}
					return tc.connect(ctx)
				},
				OnListen:       func(context.Context) { signal() },
				OnNotify:       func(string) {},
				ReconnectDelay: time.Hour,
			}
			lctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- l.Listen(lctx) }()
			select {
			case <-called:
			case <-ctx.Done():
				t.Fatal("Listen never got going")
			}
			stop()
			start := time.Now()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Listen = %v after cancel, want nil", err)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Errorf("Listen returned %v after cancel, want promptly", d)
				}
			case <-ctx.Done():
				t.Fatal("Listen did not return after cancel")
			}
			if l.Connected() {
				t.Errorf("Connected() = true after Listen returned, want false")
			}
		})
	}
}
