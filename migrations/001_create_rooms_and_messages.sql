-- Rooms are created by their first message. last_seq is the room's head,
-- the seq of its newest message. Every append locks the room's row and bumps
-- last_seq in the same transaction, so seqs are handed out in commit order
-- with no gaps (a sequence would allocate before commit and let a reader
-- skip a late, lower id).
create table rooms (
    name       text        primary key,
    last_seq   bigint      not null default 0 check (last_seq >= 0),
    created_at timestamptz not null default now()
);

comment on table rooms is 'One row per chat room; last_seq is the seq of its newest message.';

-- One row per chat message, never updated. (room, seq) is the message's
-- identity: seq counts 1, 2, 3, ... within a room.
create table messages (
    room       text        not null references rooms (name),
    seq        bigint      not null check (seq > 0),
    author     text        not null,
    body       text        not null,
    created_at timestamptz not null,
    instance   text        not null,
    ref        text,
    primary key (room, seq)
);

comment on table messages is 'Chat history: one row per message, seq gap-free per room.';
comment on column messages.instance is 'INSTANCE_ID of the pgchat instance that accepted the message.';
comment on column messages.ref is 'Client-chosen id of the send; a resend with the same (room, author, ref) is stored once.';

-- Idempotent sends: the same ref from the same author to the same room is
-- one message.
create unique index messages_room_author_ref on messages (room, author, ref) where ref is not null;

-- For psql: messages by author, and by time across rooms.
create index messages_author_created_at on messages (author, created_at);
create index messages_created_at on messages (created_at);
