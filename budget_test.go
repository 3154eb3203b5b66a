package main

import (
	"net/http"
	"testing"
	"time"
)

// TestBusyReadPool: with every read connection busy (here: history reads
// waiting on a lock, DB_POOL_SIZE=1), /readyz still answers 200 (it pings
// through the append pool), and history requests beyond their budget are
// refused at once with 503 and Retry-After instead of queueing.
func TestBusyReadPool(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "DB_POOL_SIZE=1"))
	alice := dial(t, a.URL, name("alice"))
	alice.join("r")
	alice.send("r", "hello", "h1")
	alice.nextOf("ack")

	admin := dbConn(t, db)
	tx, err := admin.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(t.Context())
	if _, err := tx.Exec(t.Context(), `lock table messages in access exclusive mode`); err != nil {
		t.Fatal(err)
	}
	first := make(chan int, 1)
	go func() {
		resp, err := http.Get(a.URL + "/api/rooms/r/messages")
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	// Wait until that request holds the read connection, waiting on the lock.
	watch := dbConn(t, db)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := watch.QueryRow(t.Context(), `select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the history request never waited on the lock")
		}
		time.Sleep(10 * time.Millisecond)
	}

	resp, err := http.Get(a.URL + "/api/rooms/r/messages")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("history beyond its budget: %s, Retry-After %q; want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
	}
	resp, err = http.Get(a.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz with the read pool busy: %s, want 200", resp.Status)
	}
	tx.Rollback(t.Context())
	if code := <-first; code != http.StatusOK {
		t.Errorf("the waiting history request: %d, want 200", code)
	}
}
