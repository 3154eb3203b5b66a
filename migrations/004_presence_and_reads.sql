-- Presence: which authors each running instance has in which room.
-- Both tables are UNLOGGED: presence is rebuilt by the instances themselves,
-- so it costs no WAL, and a PostgreSQL crash (which empties unlogged
-- tables) only makes every instance announce its members again.

-- One row per running instance process (session). seen_at is its
-- heartbeat, written by the instance every PRESENCE_TIMEOUT / 5; a session
-- not seen for PRESENCE_TIMEOUT is deleted by any other instance, with its
-- members (docs/presence.md).
create unlogged table presence_sessions (
    session    text        primary key,
    instance   text        not null,
    started_at timestamptz not null default now(),
    seen_at    timestamptz not null default now()
);

comment on table presence_sessions is 'Running pgchat instances (one row per process) and their last heartbeat.';

-- One row per (instance session, room, author) present there, written in
-- coalesced batches every PRESENCE_INTERVAL. An author is present in a
-- room if any session has a row for it.
create unlogged table presence (
    session text        not null references presence_sessions (session) on delete cascade,
    room    text        not null,
    author  text        not null,
    since   timestamptz not null default now(),
    primary key (session, room, author)
);

create index presence_room on presence (room, author);

comment on table presence is 'Who is online where: an author is present in a room if any session has its row.';

-- Read state: how far each author has read each room. Durable (a normal
-- table); seq only moves forward and never past the room's head.
create table reads (
    room       text        not null references rooms (name),
    author     text        not null,
    seq        bigint      not null check (seq >= 0),
    updated_at timestamptz not null default now(),
    primary key (room, author)
);

comment on table reads is 'Read cursors: author has read room up to seq (see README, "who has read message N").';
