-- Webhook delivery progress, one row per room (webhook/). The messages
-- table is the outbox: a room's messages with seq > delivered_seq are still
-- owed to WEBHOOK_URL. An instance delivering a room holds its row with
-- SELECT ... FOR UPDATE SKIP LOCKED for the attempt, so one instance
-- delivers a room at a time and a killed one only pauses it. Additive: old
-- instances never read it.
create table webhook_cursors (
    room            text        primary key references rooms (name),
    delivered_seq   bigint      not null default 0 check (delivered_seq >= 0),
    attempts        int         not null default 0,
    next_attempt_at timestamptz not null default now(),
    failing_since   timestamptz,
    last_error      text,
    dead            boolean     not null default false,
    updated_at      timestamptz not null default now()
);

comment on table webhook_cursors is 'Webhook delivery per room: messages with seq > delivered_seq are owed to WEBHOOK_URL.';
comment on column webhook_cursors.attempts is 'Failed attempts in a row at delivering the message after delivered_seq.';
comment on column webhook_cursors.dead is 'Dead letter: failing for longer than WEBHOOK_DEAD_AFTER; delivery of this room stopped until set back to false.';
