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

-- History pages key on (conversation, seq), which the unique index message_conversation_seq
-- serves: seq is gapless and sorts like id within a conversation (the writer assigns both
-- together), so an index on (conversation, id) would only cost every insert.
DROP INDEX message_conversation_id;
