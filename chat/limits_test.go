package chat

import (
	"net/http/httptest"
	"net/netip"
	"testing"
)

func TestClientIP(t *testing.T) {
	t.Parallel()
	proxies, err := ParseTrustedProxies([]string{"10.0.0.0/8", " 192.0.2.1 ", "fd00::/8"})
	if err != nil {
		t.Fatal(err)
	}
	behindProxy := &Limits{TrustedProxies: proxies}
	onFly := &Limits{TrustedProxies: proxies, FlyClientIP: true}
	for _, tc := range []struct {
		name   string
		limits *Limits
		peer   string
		xff    []string
		fly    string
		want   string
	}{
		{"DirectClient", behindProxy, "203.0.113.9:5000", nil, "", "203.0.113.9"},
		{"UntrustedPeerCannotSpoofXFF", behindProxy, "203.0.113.9:5000", []string{"1.1.1.1"}, "", "203.0.113.9"},
		{"UntrustedPeerCannotSpoofFly", onFly, "203.0.113.9:5000", nil, "1.1.1.1", "203.0.113.9"},
		{"TrustedPeerWithoutHeader", behindProxy, "10.1.2.3:5000", nil, "", "10.1.2.3"},
		{"OneProxy", behindProxy, "10.1.2.3:5000", []string{"198.51.100.7"}, "", "198.51.100.7"},
		{"ClientPrependsAFakeHop", behindProxy, "10.1.2.3:5000", []string{"1.1.1.1, 198.51.100.7"}, "", "198.51.100.7"},
		{"TwoTrustedProxies", behindProxy, "10.1.2.3:5000", []string{"1.1.1.1, 198.51.100.7, 192.0.2.1"}, "", "198.51.100.7"},
		{"HeaderLinesInOrder", behindProxy, "10.1.2.3:5000", []string{"1.1.1.1", "198.51.100.7", "10.9.9.9"}, "", "198.51.100.7"},
		{"AllHopsTrusted", behindProxy, "10.1.2.3:5000", []string{"10.0.0.8, 10.0.0.9"}, "", "10.0.0.8"},
		{"GarbageFromAProxy", behindProxy, "10.1.2.3:5000", []string{"198.51.100.7, unknown"}, "", "10.1.2.3"},
		{"GarbageLeftOfClient", behindProxy, "10.1.2.3:5000", []string{"<script>, 198.51.100.7"}, "", "198.51.100.7"},
		{"HopWithPort", behindProxy, "10.1.2.3:5000", []string{"198.51.100.7:4711"}, "", "198.51.100.7"},
		{"IPv6Hop", behindProxy, "[fd00::1]:5000", []string{"2001:db8::5"}, "", "2001:db8::5"},
		{"IPv6HopWithPort", behindProxy, "10.1.2.3:5000", []string{"[2001:db8::5]:443"}, "", "2001:db8::5"},
		{"MappedIPv4Peer", behindProxy, "[::ffff:10.1.2.3]:5000", []string{"198.51.100.7"}, "", "198.51.100.7"},
		{"FlyClientIP", onFly, "10.1.2.3:5000", []string{"1.1.1.1, 198.51.100.7, 203.0.113.50"}, "198.51.100.7", "198.51.100.7"},
		{"FlyClientIPIgnoredOffFly", behindProxy, "10.1.2.3:5000", []string{"198.51.100.7"}, "1.1.1.1", "198.51.100.7"},
		{"BadFlyClientIPFallsBack", onFly, "10.1.2.3:5000", []string{"198.51.100.7"}, "nope", "198.51.100.7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/ws", nil)
			r.RemoteAddr = tc.peer
			for _, v := range tc.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if tc.fly != "" {
				r.Header.Set("Fly-Client-IP", tc.fly)
			}
			if got := tc.limits.clientIP(r); got != netip.MustParseAddr(tc.want) {
				t.Errorf("clientIP(peer %s, XFF %q, Fly-Client-IP %q) = %v, want %s", tc.peer, tc.xff, tc.fly, got, tc.want)
			}
		})
	}
}

func TestParseTrustedProxies(t *testing.T) {
	t.Parallel()
	got, err := ParseTrustedProxies([]string{"private", "203.0.113.7", "2001:db8::/32"})
	if err != nil {
		t.Fatal(err)
	}
	l := &Limits{TrustedProxies: got}
	for addr, want := range map[string]bool{
		"127.0.0.1": true, "::1": true, "10.200.0.1": true, "172.19.0.4": true, "192.168.1.1": true, "fdaa::3": true,
		"203.0.113.7": true, "2001:db8:1::1": true,
		"203.0.113.8": false, "8.8.8.8": false, "172.32.0.1": false, "2001:db9::1": false,
	} {
		if l.trusted(netip.MustParseAddr(addr)) != want {
			t.Errorf("trusted(%s) = %v, want %v", addr, !want, want)
		}
	}
	if got, err := ParseTrustedProxies([]string{"none"}); err != nil || len(got) != 0 {
		t.Errorf("ParseTrustedProxies(none) = %v, %v; want empty", got, err)
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0.1-10.0.0.9"} {
		if _, err := ParseTrustedProxies([]string{bad}); err == nil {
			t.Errorf("ParseTrustedProxies(%q) accepted it", bad)
		}
	}
}

func TestConnCounter(t *testing.T) {
	t.Parallel()
	var cc connCounter
	l := &Limits{MaxConns: 3, MaxConnsPerIP: 2}
	a, b := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")
	acquire := func(ip netip.Addr) (func(), string) {
		release, retryAfter, err := cc.acquire(l, ip)
		if (err == nil) != (retryAfter == "") {
			t.Fatalf("acquire(%s) = retry after %q, error %v", ip, retryAfter, err)
		}
		return release, retryAfter
	}
	ra1, _ := acquire(a)
	ra2, _ := acquire(a)
	if _, retry := acquire(a); retry != retryAfterPerIP {
		t.Fatalf("third connection from %s: Retry-After %q, want the per-IP refusal", a, retry)
	}
	rb1, _ := acquire(b)
	if _, retry := acquire(b); retry != retryAfterFull {
		t.Fatalf("fourth connection: Retry-After %q, want the instance refusal", retry)
	}
	ra1()
	ra1() // a second release is a no-op
	if _, retry := acquire(a); retry != "" {
		t.Fatalf("after a release, %s was refused", a)
	}
	ra2()
	rb1()
	// IPv6 addresses count per /64.
	l = &Limits{MaxConnsPerIP: 1}
	if _, retry := acquire(netip.MustParseAddr("2001:db8:0:1::1")); retry != "" {
		t.Fatal("first IPv6 connection refused")
	}
	if _, retry := acquire(netip.MustParseAddr("2001:db8:0:1:ffff::2")); retry != retryAfterPerIP {
		t.Fatal("a second address of the same /64 was not counted with the first")
	}
	if _, retry := acquire(netip.MustParseAddr("2001:db8:0:2::1")); retry != "" {
		t.Fatal("another /64 was refused")
	}
}
