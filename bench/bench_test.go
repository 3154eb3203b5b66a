package bench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestScanFrame(t *testing.T) {
	t.Parallel()
	tcs := []struct {
		name string
		in   string
		want frame
		ok   bool
	}{
		{"message", `{"type":"message","room":"r-1","seq":42,"author":"a","body":"123 xx","ts":"2026-11-28T22:00:00.123456Z","instance":"app-1"}`,
			frame{typ: []byte("message"), room: []byte("r-1"), seq: 42, body: []byte("123 xx")}, true},
		{"ack", `{"type":"ack","ref":"k.99","room":"r","seq":7}`,
			frame{typ: []byte("ack"), ref: []byte("k.99"), room: []byte("r"), seq: 7}, true},
		{"error", `{"type":"error","ref":"x","room":"r","code":"rate_limited","message":"slow \"down\""}`,
			frame{typ: []byte("error"), ref: []byte("x"), room: []byte("r"), code: []byte("rate_limited"), message: []byte(`slow \"down\"`)}, true},
		{"spaces and nesting", ` { "seq" : 3 , "x" : {"a":[1,"}"]} , "type" : "joined", "recovered":true }`,
			frame{typ: []byte("joined"), seq: 3}, true},
		{"escaped quote in body", `{"body":"a\"b","type":"message"}`,
			frame{typ: []byte("message"), body: []byte(`a\"b`)}, true},
		{"not an object", `[1]`, frame{}, false},
		{"truncated", `{"type":"mess`, frame{}, false},
	}
	for _, tc := range tcs {
		t.Run(tc.name, func(t *testing.T) {
			var f frame
			ok := scanFrame([]byte(tc.in), &f)
			if ok != tc.ok {
				t.Fatalf("scanFrame(%q) ok = %v, want %v", tc.in, ok, tc.ok)
			}
			if !ok {
				return
			}
			if string(f.typ) != string(tc.want.typ) || string(f.room) != string(tc.want.room) || f.seq != tc.want.seq ||
				string(f.body) != string(tc.want.body) || string(f.ref) != string(tc.want.ref) ||
				string(f.code) != string(tc.want.code) || string(f.message) != string(tc.want.message) {
				t.Errorf("scanFrame(%q) = type %q room %q seq %d body %q ref %q code %q message %q, want %+v",
					tc.in, f.typ, f.room, f.seq, f.body, f.ref, f.code, f.message, tc.want)
			}
		})
	}
}

func TestScanFrameAllocs(t *testing.T) {
	data := []byte(`{"type":"message","room":"bench-1","seq":123456,"author":"b","body":"987654321 xxxxxxxx","ts":"2026-11-28T22:00:00.123456Z","instance":"app-1"}`)
	var f frame
	if n := testing.AllocsPerRun(100, func() { scanFrame(data, &f) }); n != 0 {
		t.Errorf("scanFrame allocates %v times per frame, want 0", n)
	}
}

func TestHistQuantiles(t *testing.T) {
	t.Parallel()
	var h hist
	for i := int64(1); i <= 10000; i++ {
		h.record(i * int64(time.Microsecond))
	}
	for _, q := range []float64{0.5, 0.9, 0.99} {
		got, want := h.quantile(q), time.Duration(q*10000)*time.Microsecond
		if diff := got - want; diff < -want/30 || diff > want/30 {
			t.Errorf("quantile(%v) = %v, want %v within 3%%", q, got, want)
		}
	}
	if got := h.quantile(1); got != 10*time.Millisecond {
		t.Errorf("quantile(1) = %v, want the max, 10ms", got)
	}
	var m hist
	m.merge(&h)
	m.merge(&hist{})
	if m.summary() != h.summary() {
		t.Errorf("merged summary %+v, want %+v", m.summary(), h.summary())
	}
	for v := int64(0); v < 1<<20; v += 997 {
		if i := bucketOf(v); bucketMid(i) > v+v/30+1 || bucketMid(i) < v-v/30-1 {
			t.Fatalf("bucketMid(bucketOf(%d)) = %d, want within 3%%", v, bucketMid(i))
		}
	}
}

func TestBitset(t *testing.T) {
	t.Parallel()
	var b bitset
	want := []int64{0, 1, 63, 64, 1000, 70000}
	for _, i := range slices.Backward(want) {
		b.set(i)
	}
	if got := slices.Collect(b.all()); !slices.Equal(got, want) {
		t.Errorf("all() = %v, want %v", got, want)
	}
	if b.has(2) || !b.has(1000) || b.has(1<<40) {
		t.Errorf("has() wrong: 2 %v, 1000 %v, 2^40 %v", b.has(2), b.has(1000), b.has(1<<40))
	}
}

// TestWSConn talks to coder/websocket: echo, pings, large and fragmented
// messages, and the server's close code.
func TestWSConn(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err == nil {
			c.SetReadLimit(1 << 20)
		}
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := r.Context()
		for {
			_, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			switch s := string(data); {
			case s == "ping":
				go func() { // the pong arrives through the Read below
					if c.Ping(ctx) == nil {
						c.Write(ctx, websocket.MessageText, []byte("pong received"))
					}
				}()
			case s == "big":
				c.Write(ctx, websocket.MessageText, []byte(strings.Repeat("b", 100000)))
			case s == "frag":
				wr, _ := c.Writer(ctx, websocket.MessageText)
				wr.Write([]byte("one,"))
				wr.Write([]byte("two"))
				wr.Close()
			case s == "close":
				c.Close(websocket.StatusPolicyViolation, "slow consumer")
				return
			default:
				c.Write(ctx, websocket.MessageText, data)
			}
		}
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ws, err := dialWS(ctx, u, http.Header{"X-Test": {"1"}}, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.close()
	ws.nc.SetDeadline(time.Now().Add(10 * time.Second))
	roundTrip := func(send, want string) {
		t.Helper()
		if err := ws.writeText([]byte(send)); err != nil {
			t.Fatal(err)
		}
		got, err := ws.next()
		if err != nil {
			t.Fatalf("after %.10q: %v", send, err)
		}
		if string(got) != want {
			t.Fatalf("after %.10q got %.20q (%d bytes), want %.20q (%d bytes)", send, got, len(got), want, len(want))
		}
	}
	roundTrip("hello", "hello")
	roundTrip(strings.Repeat("m", 70000), strings.Repeat("m", 70000)) // 64-bit length, masked
	roundTrip("ping", "pong received")
	roundTrip("big", strings.Repeat("b", 100000))
	roundTrip("frag", "one,two")
	if err := ws.writeText([]byte("close")); err != nil {
		t.Fatal(err)
	}
	_, err = ws.next()
	if ce, ok := err.(*closeError); !ok || ce.code != 1008 || ce.reason != "slow consumer" {
		t.Fatalf("next after close = %v, want close 1008 slow consumer", err)
	}
}

func TestDialRefused(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many connections", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	_, err := dialWS(t.Context(), u, nil, 4096)
	he, ok := err.(*handshakeError)
	if !ok || he.status != 503 || he.body != "too many connections" {
		t.Fatalf("dialWS = %v, want HTTP 503 too many connections", err)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	tcs := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no url", Config{}, "no server URL"},
		{"mode", Config{URLs: []string{"http://x"}, Mode: "fast"}, "unknown mode"},
		{"senders", Config{URLs: []string{"http://x"}, Clients: 2, Senders: 3}, "senders"},
		{"body", Config{URLs: []string{"http://x"}, BodySize: 10}, "body size"},
		{"bad url", Config{URLs: []string{"::"}}, "bad server URL"},
	}
	for _, tc := range tcs {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Run(t.Context(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run(%+v) = %v, want an error about %q", tc.cfg, err, tc.want)
			}
		})
	}
}
