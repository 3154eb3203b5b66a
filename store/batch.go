package store

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// ErrStopped is returned by Batcher.Submit once the batcher has stopped.
var ErrStopped = errors.New("batcher stopped")

// Batcher groups messages sent concurrently on one instance into shared
// transactions (see DB.Append for why). While one batch commits, the next
// one fills, so batches grow with load and a lone message waits for no one.
type Batcher struct {
	db       *DB
	maxBatch int
	timeout  time.Duration
	log      *slog.Logger
	onCommit func(size, fresh int, took time.Duration, err error)
	onStart  func(waited time.Duration)
	queue    chan appendRequest
	stopped  chan struct{}
}

type appendRequest struct {
	msg  NewMessage
	done func(Result, error)
	at   time.Time // when Submit was called
}

// BatcherOptions configures a Batcher. Zero values pick the defaults.
type BatcherOptions struct {
	MaxBatch int           // messages per transaction; default 500
	Queue    int           // messages waiting for a transaction; default 4 × MaxBatch
	Timeout  time.Duration // per transaction; default 10s
	Log      *slog.Logger  // failed transactions are logged here, once each; nil discards
	// OnCommit, if set, is called after each transaction with its size in
	// messages, how many of them were new (not resent refs), how long it
	// took and its error. It runs on the batcher's goroutine: keep it cheap.
	OnCommit func(size, fresh int, took time.Duration, err error)
	// OnStart, if set, is called for each message as its transaction
	// starts, with how long it waited since Submit. It runs on the
	// batcher's goroutine: keep it cheap.
	OnStart func(waited time.Duration)
}

// NewBatcher returns a Batcher appending to db. Start it with Run.
func NewBatcher(db *DB, opts BatcherOptions) *Batcher {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 500
	}
	if opts.Queue <= 0 {
		opts.Queue = 4 * opts.MaxBatch
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Batcher{
		db:       db,
		maxBatch: opts.MaxBatch,
		timeout:  opts.Timeout,
		log:      opts.Log,
		onCommit: opts.OnCommit,
		onStart:  opts.OnStart,
		queue:    make(chan appendRequest, opts.Queue),
		stopped:  make(chan struct{}),
	}
}

// Submit queues m for the next transaction. done is called exactly once, from
// the batcher's goroutine, after the transaction committed (with m's Result)
// or failed; it must not block. Submit blocks while the queue is full, which
// is how senders feel back-pressure, and returns ctx's error or ErrStopped
// (done is then not called).
func (b *Batcher) Submit(ctx context.Context, m NewMessage, done func(Result, error)) error {
	select {
	case b.queue <- appendRequest{m, done, time.Now()}:
		return nil
	case <-b.stopped:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run commits queued messages until ctx is cancelled, then commits what is
// still queued and returns. Submit must not be called after Run returns.
func (b *Batcher) Run(ctx context.Context) {
	defer close(b.stopped)
	batch := make([]appendRequest, 0, b.maxBatch)
	for {
		select {
		case req := <-b.queue:
			batch = append(batch[:0], req)
		case <-ctx.Done():
			b.drain(context.WithoutCancel(ctx))
			return
		}
		batch = b.fill(batch)
		b.commit(ctx, batch)
	}
}

// fill adds whatever is queued, up to the batch limit, without waiting.
func (b *Batcher) fill(batch []appendRequest) []appendRequest {
	for len(batch) < b.maxBatch {
		select {
		case req := <-b.queue:
			batch = append(batch, req)
		default:
			return batch
		}
	}
	return batch
}

// drain commits everything queued at shutdown.
func (b *Batcher) drain(ctx context.Context) {
	for {
		batch := b.fill(nil)
		if len(batch) == 0 {
			return
		}
		b.commit(ctx, batch)
	}
}

func (b *Batcher) commit(ctx context.Context, batch []appendRequest) {
	// A commit under way finishes even when shutdown begins: its senders
	// are owed an answer.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
	defer cancel()
	msgs := make([]NewMessage, len(batch))
	for i, req := range batch {
		msgs[i] = req.msg
	}
	start := time.Now()
	if b.onStart != nil {
		for _, req := range batch {
			b.onStart(start.Sub(req.at))
		}
	}
	results, err := b.db.Append(ctx, msgs)
	if b.onCommit != nil {
		fresh := 0
		for _, r := range results {
			if !r.Duplicate {
				fresh++
			}
		}
		b.onCommit(len(msgs), fresh, time.Since(start), err)
	}
	switch {
	case IsNotifyQueueFull(err):
		b.log.Error("messages not stored: PostgreSQL's notification queue is full (a listening session stopped consuming: docs/deploy.md); senders get unavailable", "messages", len(msgs), "err", err)
	case err != nil:
		b.log.Error("messages not stored: senders get unavailable and may resend", "messages", len(msgs), "err", err)
	}
	for i, req := range batch {
		if err != nil {
			req.done(Result{}, err)
		} else {
			req.done(results[i], nil)
		}
	}
}
