-- Edits, deletes and reactions as events in the seq stream; full-text search;
-- retention (issue 13).
--
-- Safe while instances of the previous version still serve: every change is
-- additive (new nullable columns are a catalog change, no table rewrite).
-- Building messages_room_target blocks appends while it runs (about a second
-- per million messages; it only holds events): on a large table, create it
-- beforehand with CREATE INDEX CONCURRENTLY (README, "Upgrading to schema
-- 3"); the migration then skips it. (Not CONCURRENTLY here: that deadlocks
-- with the instances waiting for the migration lock meanwhile.)

-- An event is a row in messages with a kind, in the same seq stream as the
-- plain messages it is about (kind is null on those, as on every old row).
-- An edit's body is the new text; delete, react and unreact have an empty
-- body. An old instance reads events as plain messages: the protocol stays
-- whole (no seq gaps), its clients just see them as messages.
alter table messages
    add column if not exists kind       text,
    add column if not exists target     bigint,
    add column if not exists emoji      text,
    add column if not exists edited_at  timestamptz,
    add column if not exists deleted_at timestamptz;

comment on column messages.kind is 'null: a plain message; edit, delete, react, unreact: an event about message target.';
comment on column messages.target is 'The seq of the plain message an event is about.';
comment on column messages.emoji is 'The emoji of a react or unreact event.';
comment on column messages.edited_at is 'On a plain message: when it was last edited; body holds the current text.';
comment on column messages.deleted_at is 'On a plain message: when it was deleted; body is then empty, as are its edits.';

-- Earlier texts of edited messages. A delete removes them.
create table if not exists message_versions (
    room        text        not null,
    seq         bigint      not null,
    replaced_by bigint      not null,
    body        text        not null,
    created_at  timestamptz not null,
    primary key (room, seq, replaced_by),
    foreign key (room, seq) references messages (room, seq) on delete cascade
);

comment on table message_versions is 'Each text an edit replaced: message (room, seq) had body from created_at until edit replaced_by.';

-- Current reactions: one row per (message, author, emoji).
create table if not exists reactions (
    room       text        not null,
    target     bigint      not null,
    author     text        not null,
    emoji      text        not null,
    seq        bigint      not null,
    created_at timestamptz not null,
    primary key (room, target, author, emoji),
    foreign key (room, target) references messages (room, seq) on delete cascade
);

comment on table reactions is 'Current reactions; seq is the react event that added the row. Unreact and delete remove rows.';

-- Retention overrides per room (null: the instance settings apply).
alter table rooms
    add column if not exists retention_max_age      interval,
    add column if not exists retention_max_messages bigint;

comment on column rooms.retention_max_age is 'Overrides RETENTION_MAX_AGE for this room; 0 keeps messages of any age.';
comment on column rooms.retention_max_messages is 'Overrides RETENTION_MAX_MESSAGES for this room; 0 keeps any number.';

-- A message's events, for deletes (which empty the edits' bodies) and psql.
create index if not exists messages_room_target on messages (room, target, seq) where target is not null;

-- Full-text search, kept off the append path (docs/performance.md: an index
-- on messages made durable ingest much slower): an indexer in one instance at
-- a time (store.Indexer) adds each plain message's tsvector here shortly
-- after it is committed, and search_progress says how far it got per room.
-- Edits, deletes and retention update it in their own transactions. No
-- foreign key: its checks lock every referenced row, which made indexing
-- as costly as the inline index it replaces; searches join messages.
create table if not exists message_search (
    room text     not null,
    seq  bigint   not null,
    tsv  tsvector not null,
    primary key (room, seq)
);

create index if not exists message_search_tsv on message_search using gin (tsv);

comment on table message_search is 'Full-text index of the current text of plain messages not deleted, with SEARCH_CONFIG.';

create table if not exists search_progress (
    room text   primary key,
    seq  bigint not null
);

comment on table search_progress is 'Per room, the seq up to which message_search is filled.';
