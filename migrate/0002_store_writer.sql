-- What the Postgres store's writer needs besides the message model.

-- The last batch each writer committed: one row per writer (a node's run), updated in every
-- batch's transaction. When the connection drops while a COMMIT is in flight, the writer reads
-- its row after reconnecting to learn whether the batch committed, so it neither loses nor
-- repeats it: WHERE writer = $1.
CREATE TABLE store_writer (
    writer          uuid        PRIMARY KEY,
    batch           bigint      NOT NULL,
    committed_at    timestamptz NOT NULL
);

-- When each message first reached a recipient session: a narrow row inserted once
-- (INSERT ... ON CONFLICT DO NOTHING) rather than an update of the message, which would write a
-- new version of the whole row and of every index entry for each message delivered. No foreign
-- key: the insert checks that the message exists in its conversation itself (one probe instead
-- of two), and messages are never removed (deletes are soft).
-- A message's flag: WHERE message_id = $1 (the primary key).
CREATE TABLE message_delivery (
    message_id      uuid        PRIMARY KEY,
    delivered_at    timestamptz NOT NULL
);
ALTER TABLE message DROP COLUMN delivered_at;

-- History pages key on (conversation, seq), which the unique index message_conversation_seq
-- serves: seq is gapless and sorts like id within a conversation (the writer assigns both
-- together), so an index on (conversation, id) would only cost every insert.
DROP INDEX message_conversation_id;

-- Names and keys compare byte by byte (COLLATE "C"): they are identifiers, not prose, and every
-- index insertion and lookup on them then costs a memcmp instead of a locale's collation.
ALTER TABLE message
    ALTER COLUMN conversation TYPE text COLLATE "C",
    ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN author TYPE text COLLATE "C",
    ALTER COLUMN target TYPE text COLLATE "C",
    ALTER COLUMN client_msg_id TYPE text COLLATE "C";
ALTER TABLE message_reaction
    ALTER COLUMN emoji TYPE text COLLATE "C",
    ALTER COLUMN user_id TYPE text COLLATE "C";
ALTER TABLE message_read_state
    ALTER COLUMN conversation TYPE text COLLATE "C",
    ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN user_id TYPE text COLLATE "C";
ALTER TABLE message_offline
    ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN user_id TYPE text COLLATE "C";
