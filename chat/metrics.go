package chat

import "time"

// Metrics receives the hub's events, for monitoring (main exports them to
// Prometheus). Methods must be cheap, must not block and must be safe for
// concurrent use: some are called with the hub's lock held, on the delivery
// path.
type Metrics interface {
	// Connections changes the number of open WebSocket connections by delta.
	Connections(delta int)
	// Memberships changes the number of (connection, room) memberships by
	// delta.
	Memberships(delta int)
	// Delivered counts n message frames queued to clients (live and
	// replayed).
	Delivered(n int)
	// Fanout reports one message fanned out to the room's local members,
	// lag after the database stored it.
	Fanout(lag time.Duration)
	// Notified reports one notification handed to the hub by the
	// listener, lag after the database timestamp of its first message
	// (taken when the sending transaction locked the room): the rest of
	// that transaction, PostgreSQL's notification queue and the listener.
	Notified(lag time.Duration)
	// FannedOut reports how long the hub took to queue one notification's
	// messages for the room's local members, its lock included.
	FannedOut(took time.Duration)
	// Written reports one socket write of queued frames, waited after the
	// oldest of them was queued.
	Written(waited time.Duration)
	// GapFetch counts one read of missed messages from the table.
	GapFetch()
	// SlowConsumer counts one client disconnected because its queue was
	// full.
	SlowConsumer()
	// Disconnect counts one connection ended, by cause: the wsconn.Cause*
	// labels (peer_closed, peer_gone, protocol_error, invalid_utf8,
	// too_large, control_flood, fragment_flood, keepalive, write_failed)
	// or the server's (slow_consumer, shutdown, token_expired,
	// out_of_sync).
	Disconnect(cause string)
}

// nopMetrics is the Metrics used when Options.Metrics is nil.
type nopMetrics struct{}

func (nopMetrics) Connections(int)         {}
func (nopMetrics) Memberships(int)         {}
func (nopMetrics) Delivered(int)           {}
func (nopMetrics) Fanout(time.Duration)    {}
func (nopMetrics) Notified(time.Duration)  {}
func (nopMetrics) FannedOut(time.Duration) {}
func (nopMetrics) Written(time.Duration)   {}
func (nopMetrics) GapFetch()               {}
func (nopMetrics) SlowConsumer()           {}
func (nopMetrics) Disconnect(string)       {}
