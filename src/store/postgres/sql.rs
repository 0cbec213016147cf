//! The Postgres store's SQL: every statement, the mapping of rows to [`Message`], and one
//! function per operation. Pure data access: no batching, retries or queues (the writer and the
//! readers do those), so each function runs on any connection or transaction.
//!
//! Times cross as milliseconds since the Unix epoch (`int8`), converted in SQL exactly:
//! `timestamptz 'epoch' + ms * interval '1 millisecond'` in, `extract(epoch ...) * 1000` out.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::{GenericClient, Row, Statement};

use crate::store::{ConversationKey, Edit, Message, MessageId, NewMessage, Receipt, StoreError, Target};

/// The columns [`message_from_row`] reads, in its order.
/// Every query that uses them names the message table `m`.
const COLUMNS: &str = "m.id, m.conversation, m.tenant, m.author, m.target_kind, m.target, m.client_msg_id, m.body, \
     m.content_type, m.seq, (extract(epoch FROM m.created_at) * 1000)::int8, \
     (extract(epoch FROM m.edited_at) * 1000)::int8, m.deleted_at IS NOT NULL, \
     EXISTS (SELECT 1 FROM message_delivery d WHERE d.message_id = m.id)";

/// A millisecond timestamp parameter `$n` as `timestamptz`.
fn ts(n: usize) -> String {
    format!("(timestamptz 'epoch' + ${n}::int8 * interval '1 millisecond')")
}

/// The writer's statements, prepared once per connection.
pub(super) struct Prepared {
    /// The common batch (appends, delivery marks, offline entries) as one statement, so one
    /// round trip and one implicit transaction: see [`write_batch`].
    pub write_batch: Statement,
    pub next_seqs: Statement,
    pub find_duplicates: Statement,
    pub mark_read: Statement,
}

impl Prepared {
    pub(super) async fn new(c: &impl GenericClient) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            // Data-modifying CTEs all run, to completion, in the statement's one transaction. The
            // marks and queue entries name messages committed before (a message is acked, then
            // delivered or queued), which the statement's snapshot sees.
            //
            // Every lookup of a message from a list of keys is a LATERAL subquery with LIMIT 1:
            // one index probe per key, whatever the planner thinks of the table's size. As a
            // join, a plan made while the table was small (a prepared statement keeps it) hashes
            // the whole table on every batch.
            write_batch: c
                .prepare(
                    "WITH ins AS (INSERT INTO message (id, conversation, tenant, author, target_kind, target, \
                       client_msg_id, body, content_type, seq, created_at) \
                       SELECT k.id, k.c, k.t, k.a, k.tk, k.tg, k.cm, k.b, k.ct, k.s, \
                       timestamptz 'epoch' + k.ms * interval '1 millisecond' \
                       FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                       $7::text[], $8::text[], $9::text[], $10::int8[], $11::int8[]) \
                       AS k(id, c, t, a, tk, tg, cm, b, ct, s, ms) RETURNING 1), \
                     dlv AS (INSERT INTO message_delivery (message_id, delivered_at) \
                       SELECT k.id, now() FROM unnest($12::uuid[], $13::text[]) AS k(id, c) \
                       CROSS JOIN LATERAL (SELECT 1 FROM message m WHERE m.id = k.id AND m.conversation = k.c LIMIT 1) AS known \
                       ON CONFLICT DO NOTHING RETURNING message_id), \
                     off AS (INSERT INTO message_offline (tenant, user_id, message_id, queued_at) \
                       SELECT k.t, k.u, k.m, now() FROM unnest($14::text[], $15::text[], $16::uuid[]) AS k(t, u, m) \
                       CROSS JOIN LATERAL (SELECT 1 FROM message m WHERE m.id = k.m LIMIT 1) AS known ON CONFLICT DO NOTHING RETURNING 1), \
                     mark AS (INSERT INTO store_writer (writer, batch, committed_at) VALUES ($17, $18, now()) \
                       ON CONFLICT (writer) DO UPDATE SET batch = excluded.batch, committed_at = excluded.committed_at \
                       RETURNING 1) \
                     SELECT message_id FROM dlv",
                )
                .await?,
            // One index probe per conversation (message_conversation_seq, backwards).
            next_seqs: c
                .prepare(
                    "SELECT k.c, coalesce((SELECT max(seq) FROM message WHERE conversation = k.c), 0) \
                     FROM unnest($1::text[]) AS k(c)",
                )
                .await?,
            // The dedup index (message_dedup).
            find_duplicates: c
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM unnest($1::text[], $2::text[], $3::text[]) AS k(t, a, c) \
                     CROSS JOIN LATERAL (SELECT * FROM message m WHERE m.tenant = k.t AND m.author = k.a \
                     AND m.client_msg_id = k.c LIMIT 1) AS m"
                ))
                .await?,
            mark_read: c
                .prepare(
                    "WITH r AS (SELECT m.id, m.seq, m.tenant, m.author, m.client_msg_id, m.deleted \
                       FROM (SELECT DISTINCT id FROM unnest($1::uuid[]) AS u(id)) AS k \
                       CROSS JOIN LATERAL (SELECT id, seq, tenant, author, \
                       client_msg_id, deleted_at IS NOT NULL AS deleted FROM message \
                       WHERE id = k.id AND conversation = $2 AND tenant = $3 LIMIT 1) AS m), \
                     old AS (SELECT coalesce((SELECT last_read_seq FROM message_read_state \
                       WHERE conversation = $2 AND user_id = $4), 0) AS s), \
                     up AS (INSERT INTO message_read_state (conversation, tenant, user_id, last_read_seq, updated_at) \
                       SELECT $2, $3, $4, max(seq), now() FROM r HAVING count(*) > 0 \
                       ON CONFLICT (conversation, user_id) DO UPDATE SET \
                       last_read_seq = greatest(message_read_state.last_read_seq, excluded.last_read_seq), \
                       updated_at = excluded.updated_at) \
                     SELECT r.id, r.tenant, r.author, r.client_msg_id FROM r, old \
                     WHERE r.seq > old.s AND r.author <> $4 AND NOT r.deleted ORDER BY r.seq",
                )
                .await?,
        })
    }
}

/// A message row (without its edits and reactions; see [`attach`]).
fn message_from_row(r: &Row) -> Result<Message, tokio_postgres::Error> {
    let kind: &str = r.try_get(4)?;
    let target: String = r.try_get(5)?;
    let seq: i64 = r.try_get(9)?;
    Ok(Message {
        id: r.try_get(0)?,
        conversation: ConversationKey(Arc::from(r.try_get::<_, &str>(1)?)),
        tenant: Arc::from(r.try_get::<_, &str>(2)?),
        author: Arc::from(r.try_get::<_, &str>(3)?),
        target: if kind == "room" { Target::Room(target.into()) } else { Target::User(target.into()) },
        client_msg_id: r.try_get(6)?,
        body: r.try_get(7)?,
        content_type: r.try_get(8)?,
        seq: u64::try_from(seq).unwrap_or(0),
        created_at_ms: r.try_get(10)?,
        edited_at_ms: r.try_get(11)?,
        edits: Vec::new(),
        deleted: r.try_get(12)?,
        reactions: Default::default(),
        delivered: r.try_get(13)?,
    })
}

fn messages_from_rows(rows: &[Row]) -> Result<Vec<Message>, tokio_postgres::Error> {
    rows.iter().map(message_from_row).collect()
}

fn receipt_from_row(r: &Row) -> Result<Receipt, tokio_postgres::Error> {
    Ok(Receipt {
        id: r.try_get(0)?,
        tenant: Arc::from(r.try_get::<_, &str>(1)?),
        author: Arc::from(r.try_get::<_, &str>(2)?),
        client_msg_id: r.try_get(3)?,
    })
}

/// Fills in the edits and reactions of `messages`: two queries whatever their number.
pub(super) async fn attach(c: &impl GenericClient, messages: &mut [Message]) -> Result<(), tokio_postgres::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
    let index: HashMap<MessageId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let edits = c
        .query(
            "SELECT message_id, previous_body, (extract(epoch FROM edited_at) * 1000)::int8 FROM message_edit \
             WHERE message_id = ANY($1) ORDER BY message_id, n",
            &[&ids],
        )
        .await?;
    for r in &edits {
        if let Some(&i) = index.get(&r.try_get::<_, MessageId>(0)?) {
            messages[i].edits.push(Edit { body: r.try_get(1)?, edited_at_ms: r.try_get(2)? });
        }
    }
    let reactions =
        c.query("SELECT message_id, emoji, user_id FROM message_reaction WHERE message_id = ANY($1)", &[&ids]).await?;
    for r in &reactions {
        if let Some(&i) = index.get(&r.try_get::<_, MessageId>(0)?) {
            let users = messages[i].reactions.entry(r.try_get::<_, String>(1)?).or_default();
            users.insert(Arc::from(r.try_get::<_, &str>(2)?));
        }
    }
    Ok(())
}

/// One message with its edits and reactions.
pub(super) async fn get(
    c: &impl GenericClient,
    conversation: &ConversationKey,
    id: MessageId,
) -> Result<Option<Message>, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM message m WHERE m.id = $1 AND m.conversation = $2");
    let Some(row) = c.query_opt(&sql, &[&id, &conversation.as_str()]).await? else { return Ok(None) };
    let mut m = [message_from_row(&row)?];
    attach(c, &mut m).await?;
    let [m] = m;
    Ok(Some(m))
}

/// Up to `limit` messages with `seq` below `before`, newest first, and whether older ones
/// remain. Served by message_conversation_seq.
pub(super) async fn history(
    c: &impl GenericClient,
    conversation: &ConversationKey,
    before: u64,
    limit: usize,
) -> Result<(Vec<Message>, bool), tokio_postgres::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM message m WHERE m.conversation = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3"
    );
    let before = i64::try_from(before).unwrap_or(i64::MAX);
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
    let rows = c.query(&sql, &[&conversation.as_str(), &before, &fetch]).await?;
    let mut messages = messages_from_rows(&rows)?;
    let more = messages.len() > limit;
    messages.truncate(limit);
    attach(c, &mut messages).await?;
    Ok((messages, more))
}

/// The reader's pointer, 0 when none.
pub(super) async fn read_state(
    c: &impl GenericClient,
    tenant: &str,
    reader: &str,
    conversation: &ConversationKey,
) -> Result<u64, tokio_postgres::Error> {
    let row = c
        .query_opt(
            "SELECT last_read_seq FROM message_read_state WHERE conversation = $1 AND user_id = $2 AND tenant = $3",
            &[&conversation.as_str(), &reader, &tenant],
        )
        .await?;
    Ok(match row {
        Some(r) => u64::try_from(r.try_get::<_, i64>(0)?).unwrap_or(0),
        None => 0,
    })
}

/// Removes `user`'s offline queue and returns its newest `max` messages, oldest first, in one
/// transaction: the queue is gone only if the messages were read.
pub(super) async fn take_offline(
    c: &mut tokio_postgres::Client,
    tenant: &str,
    user: &str,
    max: usize,
) -> Result<Vec<Message>, tokio_postgres::Error> {
    let tx = c.transaction().await?;
    let rows = tx
        .query("DELETE FROM message_offline WHERE tenant = $1 AND user_id = $2 RETURNING message_id", &[&tenant, &user])
        .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    let mut ids = rows.iter().map(|r| r.try_get::<_, MessageId>(0)).collect::<Result<Vec<_>, _>>()?;
    // v7 ids sort by creation: the newest `max` are the last ones.
    ids.sort_unstable();
    let ids = ids.split_off(ids.len().saturating_sub(max));
    let sql = format!(
        "SELECT {COLUMNS} FROM unnest($1::uuid[]) AS k(id) \
         CROSS JOIN LATERAL (SELECT * FROM message WHERE id = k.id LIMIT 1) AS m ORDER BY m.id"
    );
    let rows = tx.query(&sql, &[&ids]).await?;
    let mut messages = messages_from_rows(&rows)?;
    attach(&tx, &mut messages).await?;
    tx.commit().await?;
    Ok(messages)
}

pub(super) async fn offline_len(
    c: &impl GenericClient,
    tenant: &str,
    user: &str,
) -> Result<usize, tokio_postgres::Error> {
    let row = c
        .query_one("SELECT count(*) FROM message_offline WHERE tenant = $1 AND user_id = $2", &[&tenant, &user])
        .await?;
    Ok(usize::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
}

/// The originals of the `(tenant, author, client_msg_id)` triples that are already stored.
pub(super) async fn find_duplicates(
    c: &impl GenericClient,
    p: &Prepared,
    keys: &[(&str, &str, &str)],
) -> Result<HashMap<(String, String, String), Message>, tokio_postgres::Error> {
    let (t, a, k): (Vec<&str>, Vec<&str>, Vec<&str>) =
        (keys.iter().map(|k| k.0).collect(), keys.iter().map(|k| k.1).collect(), keys.iter().map(|k| k.2).collect());
    let rows = c.query(&p.find_duplicates, &[&t, &a, &k]).await?;
    let mut found = messages_from_rows(&rows)?;
    attach(c, &mut found).await?;
    Ok(found
        .into_iter()
        .filter_map(|m| {
            let cid = m.client_msg_id.clone()?;
            Some(((m.tenant.to_string(), m.author.to_string(), cid), m))
        })
        .collect())
}

/// The highest stored `seq` of each conversation (0 for a new one).
pub(super) async fn last_seqs(
    c: &impl GenericClient,
    p: &Prepared,
    conversations: &[&str],
) -> Result<Vec<(String, u64)>, tokio_postgres::Error> {
    let rows = c.query(&p.next_seqs, &[&conversations]).await?;
    rows.iter().map(|r| Ok((r.try_get::<_, String>(0)?, u64::try_from(r.try_get::<_, i64>(1)?).unwrap_or(0)))).collect()
}

/// A message about to be inserted, with the id and `seq` the writer gave it.
pub(super) fn stored(m: &NewMessage, id: MessageId, seq: u64) -> Message {
    Message::first_stored(m.clone(), id, seq)
}

/// Messages as the eleven arrays the inserts `unnest`, in the order of their parameters.
struct Columns<'a> {
    ids: Vec<MessageId>,
    conversations: Vec<&'a str>,
    tenants: Vec<&'a str>,
    authors: Vec<&'a str>,
    kinds: Vec<&'a str>,
    targets: Vec<&'a str>,
    client_ids: Vec<Option<&'a str>>,
    bodies: Vec<&'a str>,
    content_types: Vec<&'a str>,
    seqs: Vec<i64>,
    created: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(messages: &[&'a Message]) -> Self {
        let col = |f: fn(&'a Message) -> &'a str| messages.iter().map(|m| f(m)).collect::<Vec<&str>>();
        Self {
            ids: messages.iter().map(|m| m.id).collect(),
            conversations: col(|m| m.conversation.as_str()),
            tenants: col(|m| &m.tenant),
            authors: col(|m| &m.author),
            kinds: col(|m| if matches!(m.target, Target::Room(_)) { "room" } else { "user" }),
            targets: col(|m| match &m.target {
                Target::User(u) | Target::Room(u) => u,
            }),
            client_ids: messages.iter().map(|m| m.client_msg_id.as_deref()).collect(),
            bodies: col(|m| &m.body),
            content_types: col(|m| &m.content_type),
            seqs: messages.iter().map(|m| i64::try_from(m.seq).unwrap_or(i64::MAX)).collect(),
            created: messages.iter().map(|m| m.created_at_ms).collect(),
        }
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 11] {
        [
            &self.ids,
            &self.conversations,
            &self.tenants,
            &self.authors,
            &self.kinds,
            &self.targets,
            &self.client_ids,
            &self.bodies,
            &self.content_types,
            &self.seqs,
            &self.created,
        ]
    }
}

/// Runs the common batch as one statement: inserts `messages`, marks `delivered` and queues
/// `offline`, and moves the writer's marker, in one implicit transaction and one round trip.
/// Returns the ids marked delivered now (not before). A retransmission fails it on the dedup
/// index ([`is_retransmission`]).
pub(super) async fn write_batch(
    c: &impl GenericClient,
    p: &Prepared,
    messages: &[&Message],
    delivered: &[(MessageId, &str)],
    offline: &[(&str, &str, MessageId)],
    marker: (uuid::Uuid, i64),
) -> Result<std::collections::HashSet<MessageId>, tokio_postgres::Error> {
    let m = Columns::of(messages);
    let d_ids: Vec<MessageId> = delivered.iter().map(|d| d.0).collect();
    let d_convs: Vec<&str> = delivered.iter().map(|d| d.1).collect();
    let o_tenants: Vec<&str> = offline.iter().map(|o| o.0).collect();
    let o_users: Vec<&str> = offline.iter().map(|o| o.1).collect();
    let o_ids: Vec<MessageId> = offline.iter().map(|o| o.2).collect();
    let rows = c
        .query(
            &p.write_batch,
            &[m.params().as_slice(), &[&d_ids, &d_convs, &o_tenants, &o_users, &o_ids, &marker.0, &marker.1]].concat(),
        )
        .await?;
    rows.iter().map(|r| r.try_get::<_, MessageId>(0)).collect()
}

/// Whether an insert failed because a message's client id is already stored.
pub(super) fn is_retransmission(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION && db.constraint() == Some("message_dedup")
    })
}

/// A `seq` another writer gave first: the writer's idea of the conversation's last `seq` is
/// out of date (two nodes appending to one conversation).
pub(super) fn is_seq_conflict(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("message_conversation_seq")
    })
}

pub(super) async fn mark_read(
    c: &impl GenericClient,
    p: &Prepared,
    tenant: &str,
    reader: &str,
    conversation: &ConversationKey,
    ids: &[MessageId],
) -> Result<Vec<Receipt>, tokio_postgres::Error> {
    let rows = c.query(&p.mark_read, &[&ids, &conversation.as_str(), &tenant, &reader]).await?;
    rows.iter().map(receipt_from_row).collect()
}

/// The author and deleted flag of a message, locked for the rest of the transaction.
async fn lock(
    c: &impl GenericClient,
    conversation: &ConversationKey,
    id: MessageId,
) -> Result<Option<(String, bool)>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            "SELECT author, deleted_at IS NOT NULL FROM message WHERE id = $1 AND conversation = $2 FOR UPDATE",
            &[&id, &conversation.as_str()],
        )
        .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}

/// The outcome of an operation on one message: the database answered (`Ok`), and the answer is
/// the message or why the operation was refused.
pub(super) type Outcome<T> = Result<Result<T, StoreError>, tokio_postgres::Error>;

async fn reload(c: &impl GenericClient, conversation: &ConversationKey, id: MessageId) -> Outcome<Message> {
    Ok(get(c, conversation, id).await?.ok_or(StoreError::NotFound))
}

pub(super) async fn edit(
    c: &impl GenericClient,
    conversation: &ConversationKey,
    id: MessageId,
    editor: &str,
    body: &str,
    now_ms: i64,
    max_edits: usize,
) -> Outcome<Message> {
    match lock(c, conversation, id).await? {
        None => return Ok(Err(StoreError::NotFound)),
        Some((author, _)) if author != editor => return Ok(Err(StoreError::Forbidden)),
        Some((_, true)) => return Ok(Err(StoreError::Deleted)),
        Some(_) => {}
    }
    let row = c
        .query_one(
            &format!(
                "INSERT INTO message_edit (message_id, n, previous_body, edited_at) \
                 SELECT $1, coalesce((SELECT max(n) FROM message_edit WHERE message_id = $1), 0) + 1, body, {} \
                 FROM message WHERE id = $1 RETURNING n",
                ts(2)
            ),
            &[&id, &now_ms],
        )
        .await?;
    let n: i32 = row.try_get(0)?;
    c.execute(&format!("UPDATE message SET body = $2, edited_at = {} WHERE id = $1", ts(3)), &[&id, &body, &now_ms])
        .await?;
    let keep_from = i64::from(n) - i64::try_from(max_edits).unwrap_or(i64::MAX);
    if keep_from > 0 {
        c.execute("DELETE FROM message_edit WHERE message_id = $1 AND n <= $2", &[&id, &(keep_from as i32)]).await?;
    }
    reload(c, conversation, id).await
}

pub(super) async fn delete(
    c: &impl GenericClient,
    conversation: &ConversationKey,
    id: MessageId,
    by: &str,
    now_ms: i64,
) -> Outcome<Message> {
    match lock(c, conversation, id).await? {
        None => return Ok(Err(StoreError::NotFound)),
        Some((author, _)) if author != by => return Ok(Err(StoreError::Forbidden)),
        Some((_, true)) => {}
        Some((_, false)) => {
            c.execute(
                &format!("UPDATE message SET deleted_at = {0}, edited_at = {0}, body = '' WHERE id = $1", ts(2)),
                &[&id, &now_ms],
            )
            .await?;
            c.execute("DELETE FROM message_edit WHERE message_id = $1", &[&id]).await?;
        }
    }
    reload(c, conversation, id).await
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn react(
    c: &impl GenericClient,
    conversation: &ConversationKey,
    id: MessageId,
    user: &str,
    emoji: &str,
    add: bool,
    max: usize,
) -> Outcome<Message> {
    match lock(c, conversation, id).await? {
        None => return Ok(Err(StoreError::NotFound)),
        Some((_, true)) => return Ok(Err(StoreError::Deleted)),
        Some(_) => {}
    }
    if add {
        let row = c
            .query_one(
                "SELECT count(*), coalesce(bool_or(emoji = $2 AND user_id = $3), false) FROM message_reaction \
                 WHERE message_id = $1",
                &[&id, &emoji, &user],
            )
            .await?;
        let (count, present): (i64, bool) = (row.try_get(0)?, row.try_get(1)?);
        if !present {
            if usize::try_from(count).unwrap_or(usize::MAX) >= max {
                return Ok(Err(StoreError::LimitReached { what: "reactions", max }));
            }
            c.execute(
                "INSERT INTO message_reaction (message_id, emoji, user_id, created_at) VALUES ($1, $2, $3, now()) \
                 ON CONFLICT DO NOTHING",
                &[&id, &emoji, &user],
            )
            .await?;
        }
    } else {
        c.execute(
            "DELETE FROM message_reaction WHERE message_id = $1 AND emoji = $2 AND user_id = $3",
            &[&id, &emoji, &user],
        )
        .await?;
    }
    reload(c, conversation, id).await
}

/// The append a user would write without batching: one autocommitted `INSERT`.
pub(super) async fn insert_one(c: &impl GenericClient, m: &Message) -> Result<u64, tokio_postgres::Error> {
    let target = match &m.target {
        Target::User(u) | Target::Room(u) => &**u,
    };
    let kind = if matches!(m.target, Target::Room(_)) { "room" } else { "user" };
    c.execute(
        &format!(
            "INSERT INTO message (id, conversation, tenant, author, target_kind, target, client_msg_id, body, \
             content_type, seq, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, {})",
            ts(11)
        ),
        &[
            &m.id,
            &m.conversation.as_str(),
            &&*m.tenant,
            &&*m.author,
            &kind,
            &target,
            &m.client_msg_id,
            &m.body,
            &m.content_type,
            &i64::try_from(m.seq).unwrap_or(i64::MAX),
            &m.created_at_ms,
        ],
    )
    .await
}

/// Whether a writer's batch `batch` committed (after a connection lost during its COMMIT).
pub(super) async fn committed(
    c: &impl GenericClient,
    writer: uuid::Uuid,
    batch: i64,
) -> Result<bool, tokio_postgres::Error> {
    let row = c.query_opt("SELECT batch FROM store_writer WHERE writer = $1", &[&writer]).await?;
    Ok(match row {
        Some(r) => r.try_get::<_, i64>(0)? >= batch,
        None => false,
    })
}
