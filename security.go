package main

import "github.com/pgchat/pgchat/chat"

// maxHeaderBytes bounds a request's headers, the WebSocket upgrade's
// included: tokens and cookies fit in far less than net/http's default 1 MB.
const maxHeaderBytes = 64 << 10

// limits returns the connection and frame limits of cfg, which validate has
// checked.
func limits(cfg Config) chat.Limits {
	proxies, _ := chat.ParseTrustedProxies(cfg.TrustedProxies)
	return chat.Limits{
		MaxConns:       cfg.MaxConns,
		MaxConnsPerIP:  cfg.MaxConnsPerIP,
		TrustedProxies: proxies,
		// On Fly.io, Fly Proxy sets Fly-Client-IP to the address it
		// accepted the connection from, replacing any the client sent;
		// its X-Forwarded-For ends with the app's own address instead.
		FlyClientIP:   cfg.FlyMachineID != "",
		MaxFrameBytes: cfg.MaxFrameBytes,
	}
}

// authMode names the mode for the start-up log.
func authMode(cfg Config) string {
	if cfg.AuthSecret == "" {
		return "anonymous (AUTH_SECRET unset: clients choose their names)"
	}
	return "token"
}
