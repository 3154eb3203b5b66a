package chat

import (
	"context"
	"net/http"
)

// Reads of the table share the instance's read pool (DB_POOL_SIZE). Joins
// wait for a connection as long as it takes (up to WRITE_TIMEOUT); the
// other readers are bounded so that they cannot take the whole pool:
// catch-ups (one per room that fell behind, many at once after a listener
// reconnect) to MaxCatchUps at a time, history requests to MaxHistoryReads,
// beyond which they are refused with 503 and Retry-After. Appends have a
// pool of their own (store.OpenWith).

// slots is a counting semaphore.
type slots chan struct{}

func newSlots(n int) slots { return make(slots, max(n, 1)) }

// acquire waits for a slot, or for ctx.
func (s slots) acquire(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// tryAcquire takes a slot if one is free.
func (s slots) tryAcquire() bool {
	select {
	case s <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s slots) release() { <-s }

// historyBusy answers a history request that found every history slot
// taken.
func historyBusy(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "1")
	writeJSONError(w, http.StatusServiceUnavailable, errorf(CodeUnavailable, "too many history requests at once: retry"))
}
