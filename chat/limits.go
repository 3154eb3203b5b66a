package chat

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
)

// Limits bounds what one instance accepts before the WebSocket upgrade.
// Zero values mean no limit, except MaxFrameBytes.
type Limits struct {
	// MaxConns caps this instance's WebSocket connections; more get 503
	// with Retry-After.
	MaxConns int
	// MaxConnsPerIP caps the connections of one client address (of one
	// /64 for IPv6, which a single host usually has whole).
	MaxConnsPerIP int
	// TrustedProxies are the peers whose forwarding headers are believed.
	// From any other peer, the client address is the peer's own.
	TrustedProxies []netip.Prefix
	// FlyClientIP makes the Fly-Client-IP header of trusted peers the
	// client address. Set it on Fly.io only: Fly Proxy overwrites that
	// header, other proxies pass a client's through.
	FlyClientIP bool
	// MaxFrameBytes is the largest frame read; a larger one closes the
	// connection with 1009. Zero: 6 × MaxMessageBytes + 1024, room for a
	// body of MaxMessageBytes written entirely as JSON escapes, so that
	// bodies over the limit get too_large instead.
	MaxFrameBytes int
}

// privateNets are the addresses "private" stands for in TRUSTED_PROXIES:
// loopback, RFC 1918 and IPv6 unique local addresses, where proxies in
// front of an instance usually connect from (Docker networks, Fly's private
// network, a VPC) and internet clients never do.
var privateNets = []string{"127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"}

// ParseTrustedProxies parses a TRUSTED_PROXIES list of IP addresses, CIDR
// prefixes and the word "private" (loopback and private networks). "none"
// alone is the empty list.
func ParseTrustedProxies(list []string) ([]netip.Prefix, error) {
	if len(list) == 1 && strings.TrimSpace(list[0]) == "none" {
		return nil, nil
	}
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		switch s {
		case "":
			continue
		case "private":
			for _, n := range privateNets {
				out = append(out, netip.MustParsePrefix(n))
			}
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an IP address nor a CIDR prefix", s)
		}
		a = a.WithZone("").Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

func (l *Limits) trusted(a netip.Addr) bool {
	for _, p := range l.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// maxForwardedHops bounds the X-Forwarded-For entries looked at.
const maxForwardedHops = 32

// clientIP returns the address r's connection counts against. It is the
// peer's address unless the peer is a trusted proxy; then it is
// Fly-Client-IP (with FlyClientIP), else the right-most X-Forwarded-For
// entry that is not a trusted proxy: proxies append the address they got
// the request from, so entries left of it may have been written by the
// client. The zero Addr means the peer's address could not be read.
func (l *Limits) clientIP(r *http.Request) netip.Addr {
	peer := parseHostAddr(r.RemoteAddr)
	if !peer.IsValid() || !l.trusted(peer) {
		return peer
	}
	if l.FlyClientIP {
		if a := parseHostAddr(r.Header.Get("Fly-Client-IP")); a.IsValid() {
			return a
		}
	}
	var hops []string
	for _, h := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(h, ",")...)
	}
	client := peer
	for i := len(hops) - 1; i >= 0 && i >= len(hops)-maxForwardedHops; i-- {
		a := parseHostAddr(hops[i])
		if !a.IsValid() {
			// Only a misconfigured trusted proxy writes garbage: blame
			// the last hop known for sure.
			return client
		}
		client = a
		if !l.trusted(a) {
			return a
		}
	}
	return client
}

// parseHostAddr parses "1.2.3.4", "1.2.3.4:80", "::1", "[::1]:80" with
// spaces around, and returns the address without zone, IPv4-mapped IPv6 as
// IPv4. It returns the zero Addr for anything else.
func parseHostAddr(s string) netip.Addr {
	s = strings.TrimSpace(s)
	a, err := netip.ParseAddr(s)
	if err != nil {
		host, _, serr := net.SplitHostPort(s)
		if serr != nil {
			return netip.Addr{}
		}
		if a, err = netip.ParseAddr(host); err != nil {
			return netip.Addr{}
		}
	}
	return a.WithZone("").Unmap()
}

// ipKey is the bucket an address counts in: IPv6 addresses by /64.
func ipKey(a netip.Addr) netip.Addr {
	if a.Is6() {
		return netip.PrefixFrom(a, 64).Masked().Addr()
	}
	return a
}

// connCounter counts open connections per instance and per client address.
// The zero value is ready to use; it is safe for concurrent use.
type connCounter struct {
	mu    sync.Mutex
	total int
	perIP map[netip.Addr]int
}

// Retry-After values for refused connections, in seconds. A full instance
// frees up or the load balancer moves the client elsewhere; a client with
// too many sockets has to close some first.
const (
	retryAfterFull  = "5"
	retryAfterPerIP = "10"
)

// acquire counts a new connection from ip, unless l's caps are reached;
// then it returns an error saying which one and the Retry-After to send.
// release must be called once the connection is gone.
func (cc *connCounter) acquire(l *Limits, ip netip.Addr) (release func(), retryAfter string, err error) {
	key := ipKey(ip)
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if l.MaxConns > 0 && cc.total >= l.MaxConns {
		return nil, retryAfterFull, fmt.Errorf("instance is at its limit of %d connections: retry later", l.MaxConns)
	}
	if l.MaxConnsPerIP > 0 && cc.perIP[key] >= l.MaxConnsPerIP {
		return nil, retryAfterPerIP, fmt.Errorf("too many connections from your address (limit %d): close some and retry", l.MaxConnsPerIP)
	}
	if cc.perIP == nil {
		cc.perIP = make(map[netip.Addr]int)
	}
	cc.total++
	cc.perIP[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			cc.mu.Lock()
			defer cc.mu.Unlock()
			cc.total--
			if cc.perIP[key]--; cc.perIP[key] <= 0 {
				delete(cc.perIP, key)
			}
		})
	}, "", nil
}

// readLimit is the WebSocket read limit for a connection.
func (l *Limits) readLimit(maxMessageBytes int) int64 {
	if l.MaxFrameBytes > 0 {
		return int64(l.MaxFrameBytes)
	}
	return int64(6*maxMessageBytes + 1024)
}
