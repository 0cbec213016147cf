//! The writer: one connection on the sidecar thread that turns the shards' queued writes into
//! few transactions.
//!
//! Everything queued while a commit is in flight goes into the next one, up to
//! `max_batch_rows` and `max_batch_bytes`. Its appends, delivery marks and offline entries, and
//! the writer's `store_writer` marker, are one statement of data-modifying CTEs over `unnest`
//! arrays ([`write_common`]): alone it is the whole batch, one round trip in its own implicit
//! transaction; with edits, deletes, reactions or read marks it opens an explicit transaction
//! that runs those one by one after it. Each write is answered when its transaction has
//! committed, so an ack means durable; batches commit one after another, in queue order, so a
//! conversation's `seq`s are committed in order and a history page never skips one that
//! commits late.
//!
//! When Postgres is down, slow or restarted the batch stays at the front of the queue and is
//! retried on a new connection (waits doubling from 50 ms to `reconnect_max_ms`); writes that
//! wait longer than `write_timeout_ms` are answered `unavailable`, never acknowledged. A
//! connection lost while the commit was in flight leaves the outcome uncertain: the writer reads
//! its row in `store_writer`, which every batch updates, to learn whether the batch committed,
//! and answers or retries it accordingly. A batch the database refuses (not a connection
//! problem) is retried one write per transaction, so only the write at fault fails.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{Client, GenericClient};

use super::sql::{self, Prepared};
use super::stats::Refusal;
use super::{Ctx, Reply, Write, WriteOp};
use crate::sidecar::ServiceContext;
use crate::store::{Appended, Message, MessageId, Receipt, StoreError};

/// The first wait before reconnecting; doubled up to `reconnect_max_ms`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Conversations whose last `seq` the writer remembers; past it, it forgets them all and reads
/// them again as they come.
const MAX_CACHED_SEQS: usize = 100_000;

/// The last `seq` of each conversation written recently. Cleared whenever a batch fails, so a
/// `seq` given to a write that did not commit is given again, and reread from the database.
#[derive(Default)]
struct Seqs(HashMap<String, u64>);

impl Seqs {
    fn next(&mut self, conversation: &str) -> u64 {
        let last = self.0.entry(conversation.to_owned()).or_insert(0);
        *last += 1;
        *last
    }

    fn missing<'a>(&self, conversations: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        let mut out: Vec<&str> = conversations.filter(|c| !self.0.contains_key(*c)).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The last `seq` of each of `conversations`, to [`Seqs::restore`] after a rollback.
    fn snapshot<'a>(&self, conversations: impl Iterator<Item = &'a str>) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> =
            conversations.filter_map(|c| self.0.get(c).map(|s| (c.to_owned(), *s))).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn restore(&mut self, snapshot: &[(String, u64)]) {
        for (c, s) in snapshot {
            self.0.insert(c.clone(), *s);
        }
    }

    fn learn(&mut self, known: Vec<(String, u64)>) {
        if self.0.len() + known.len() > MAX_CACHED_SEQS {
            self.0.clear();
        }
        self.0.extend(known);
    }
}

/// What a committed write answers.
enum Done {
    Appended(Appended),
    Message(Result<Message, StoreError>),
    Delivered(bool),
    Read(Vec<Receipt>),
    Pushed,
}

/// Why a batch did not commit.
enum Failure {
    /// It certainly did not: the transaction failed before its COMMIT, or the COMMIT was refused.
    Rolledback(tokio_postgres::Error),
    /// The connection was lost while the COMMIT was in flight: it may have committed, and if it
    /// did, these are its answers.
    Uncertain(tokio_postgres::Error, Vec<Done>),
    /// The dedup index kept skipping messages that were not stored when read (another writer
    /// inserting the same ids meanwhile): rolled back.
    Conflict,
}

type Key = (String, String, String);

/// The batch's appends with their ids and `seq`s, by their place in the batch.
struct Plan {
    /// New messages, to insert.
    new: Vec<(usize, Message)>,
    /// Answers of retransmissions (of a stored original, or of a message earlier in the batch).
    again: Vec<(usize, Appended)>,
}

/// Gives the batch's new messages their ids and `seq`s, in order. `stored` holds the originals
/// of retransmissions found in the database (empty but for the rare retry after the dedup index
/// refused the batch); a retransmission of a message earlier in the batch gets that one.
fn plan(appends: &[(usize, &crate::store::NewMessage)], stored: &HashMap<Key, Message>, seqs: &mut Seqs) -> Plan {
    let mut new: Vec<(usize, Message)> = Vec::with_capacity(appends.len());
    let mut again = Vec::new();
    // Keys borrowed from the batch, to the message's place in `new`.
    let mut in_batch: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for &(i, m) in appends {
        let key = m.client_msg_id.as_deref().map(|c| (&*m.tenant, &*m.author, c));
        let original = key.and_then(|(t, a, c)| {
            let found = (!stored.is_empty()).then(|| stored.get(&(t.to_owned(), a.to_owned(), c.to_owned()))).flatten();
            found.or_else(|| in_batch.get(&(t, a, c)).map(|&k| &new[k].1))
        });
        if let Some(original) = original {
            again.push((i, Appended { message: original.clone(), duplicate: true }));
            continue;
        }
        if let Some(k) = key {
            in_batch.insert(k, new.len());
        }
        new.push((i, sql::stored(m, MessageId::now_v7(), seqs.next(m.conversation.as_str()))));
    }
    Plan { new, again }
}

/// Whether an error is the connection's or the server's state (retry on a new connection)
/// rather than the statement's (retrying would fail again).
fn transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        // Connection exceptions, operator intervention (shutdown), insufficient resources,
        // serialization failures and deadlocks, read-only transactions (a failover).
        Some(db) => {
            let code = db.code().code();
            ["08", "57", "53", "40", "25"].iter().any(|class| code.starts_with(class))
        }
    }
}

/// The batch's appends, by their place in it.
fn appends_of(batch: &[Write]) -> Vec<(usize, &crate::store::NewMessage)> {
    batch
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match &w.op {
            WriteOp::Append { msg, .. } => Some((i, msg)),
            _ => None,
        })
        .collect()
}

/// The `(tenant, author, client_msg_id)` of every append that has a client id.
fn retransmission_keys<'a>(appends: &[(usize, &'a crate::store::NewMessage)]) -> Vec<(&'a str, &'a str, &'a str)> {
    appends.iter().filter_map(|(_, m)| Some((&*m.tenant, &*m.author, m.client_msg_id.as_deref()?))).collect()
}

/// Writes the batch's appends, delivery marks and offline entries, and moves the writer's
/// marker, in one statement: one round trip, which counts when the database's backend waits
/// for a core shared with the node and the load. Returns every write's answer by its place in
/// the batch (`None` for the writes it leaves to [`commit`]).
///
/// A retransmission (a client id already stored) fails the statement on the dedup index; the
/// originals are then read and the statement run again without them, so `seq` keeps no gap.
/// `in_tx`: inside an explicit transaction, where a savepoint undoes the failed statement and a
/// lost connection means the transaction did not commit; outside, the statement is its own
/// transaction, so an answer lost on the way leaves the outcome [`Failure::Uncertain`].
async fn write_common(
    c: &impl GenericClient,
    p: &Prepared,
    batch: &[Write],
    seqs: &mut Seqs,
    marker: (uuid::Uuid, i64),
    in_tx: bool,
) -> Result<Vec<Option<Done>>, Failure> {
    use Failure::Rolledback as R;
    let appends = appends_of(batch);
    let delivered: Vec<(MessageId, &str)> = batch
        .iter()
        .filter_map(|w| match &w.op {
            WriteOp::Delivered { conversation, id, .. } => Some((*id, conversation.as_str())),
            _ => None,
        })
        .collect();
    let offline: Vec<(&str, &str, MessageId)> = batch
        .iter()
        .filter_map(|w| match &w.op {
            WriteOp::PushOffline { tenant, user, id, .. } => Some((tenant.as_str(), user.as_str(), *id)),
            _ => None,
        })
        .collect();
    let missing = seqs.missing(appends.iter().map(|(_, m)| m.conversation.as_str()));
    if !missing.is_empty() {
        seqs.learn(sql::last_seqs(c, p, &missing).await.map_err(R)?);
    }
    let mut before = seqs.snapshot(appends.iter().map(|(_, m)| m.conversation.as_str()));
    let retransmittable = appends.iter().any(|(_, m)| m.client_msg_id.is_some());
    if in_tx && !appends.is_empty() {
        c.batch_execute("SAVEPOINT common").await.map_err(R)?;
    }
    let mut originals = HashMap::new();
    for _ in 0..4 {
        let Plan { new, again } = plan(&appends, &originals, seqs);
        let rows: Vec<&Message> = new.iter().map(|(_, m)| m).collect();
        match sql::write_batch(c, p, &rows, &delivered, &offline, marker).await {
            Ok(first) => return Ok(answers(batch, new, again, Some(&first))),
            Err(e) if retransmittable && sql::is_retransmission(&e) => {
                // Nothing of the statement took effect: read the originals, renumber, again.
                if in_tx {
                    c.batch_execute("ROLLBACK TO SAVEPOINT common").await.map_err(R)?;
                }
                seqs.restore(&before);
                originals = sql::find_duplicates(c, p, &retransmission_keys(&appends)).await.map_err(R)?;
            }
            Err(e) if sql::is_seq_conflict(&e) => {
                // Another writer (another node of a cluster) appended to one of these
                // conversations since its last seq was read: read them again, renumber, again.
                if in_tx {
                    c.batch_execute("ROLLBACK TO SAVEPOINT common").await.map_err(R)?;
                }
                let conversations: Vec<&str> = {
                    let mut v: Vec<&str> = appends.iter().map(|(_, m)| m.conversation.as_str()).collect();
                    v.sort_unstable();
                    v.dedup();
                    v
                };
                seqs.learn(sql::last_seqs(c, p, &conversations).await.map_err(R)?);
                before = seqs.snapshot(conversations.into_iter());
            }
            Err(e) if in_tx || e.as_db_error().is_some() => return Err(R(e)),
            // The answer was lost: if the statement committed, these are its answers (a mark
            // counts as the first, as it most likely was).
            Err(e) => {
                let done = answers(batch, new, again, None).into_iter().map(|d| d.unwrap_or(Done::Pushed)).collect();
                return Err(Failure::Uncertain(e, done));
            }
        }
    }
    Err(Failure::Conflict)
}

/// The answers of the common writes, by their place in the batch. `first` holds the messages
/// marked delivered for the first time; `None` when unknown, taken as all of them.
fn answers(
    batch: &[Write],
    new: Vec<(usize, Message)>,
    again: Vec<(usize, Appended)>,
    first: Option<&std::collections::HashSet<MessageId>>,
) -> Vec<Option<Done>> {
    let mut done: Vec<Option<Done>> = batch.iter().map(|_| None).collect();
    for (i, m) in new {
        done[i] = Some(Done::Appended(Appended { message: m, duplicate: false }));
    }
    for (i, a) in again {
        done[i] = Some(Done::Appended(a));
    }
    let mut marked = std::collections::HashSet::new();
    for (i, w) in batch.iter().enumerate() {
        match &w.op {
            WriteOp::Delivered { id, .. } => {
                // The first mark of a message in the batch is the first, later ones are not.
                let is_first = first.is_none_or(|f| f.contains(id)) && marked.insert(*id);
                done[i] = Some(Done::Delivered(is_first));
            }
            WriteOp::PushOffline { .. } => done[i] = Some(Done::Pushed),
            _ => {}
        }
    }
    done
}

/// Runs one batch: its common writes alone as one statement, or with the rest in an explicit
/// transaction.
async fn commit(
    client: &mut Client,
    p: &Prepared,
    batch: &[Write],
    seqs: &mut Seqs,
    ctx: &Ctx,
    marker: (uuid::Uuid, i64),
) -> Result<Vec<Done>, Failure> {
    use Failure::Rolledback as R;
    let common_only = batch
        .iter()
        .all(|w| matches!(w.op, WriteOp::Append { .. } | WriteOp::Delivered { .. } | WriteOp::PushOffline { .. }));
    if common_only {
        let done = write_common(&*client, p, batch, seqs, marker, false).await?;
        return Ok(done.into_iter().map(|d| d.unwrap_or(Done::Pushed)).collect());
    }
    let tx = client.transaction().await.map_err(R)?;
    let mut done = write_common(&tx, p, batch, seqs, marker, true).await?;
    // The rest, one at a time, in queue order.
    for (i, w) in batch.iter().enumerate() {
        let d = match &w.op {
            WriteOp::Edit { conversation, id, editor, body, now_ms, .. } => {
                Done::Message(sql::edit(&tx, conversation, *id, editor, body, *now_ms, ctx.max_edits).await.map_err(R)?)
            }
            WriteOp::Delete { conversation, id, by, now_ms, .. } => {
                Done::Message(sql::delete(&tx, conversation, *id, by, *now_ms).await.map_err(R)?)
            }
            WriteOp::React { conversation, id, user, emoji, add, .. } => Done::Message(
                sql::react(&tx, conversation, *id, user, emoji, *add, ctx.max_reactions).await.map_err(R)?,
            ),
            WriteOp::Read { tenant, reader, conversation, ids, .. } => {
                Done::Read(sql::mark_read(&tx, p, tenant, reader, conversation, ids).await.map_err(R)?)
            }
            _ => continue,
        };
        done[i] = Some(d);
    }
    let done: Vec<Done> = done.into_iter().map(|d| d.unwrap_or(Done::Pushed)).collect();
    match tx.commit().await {
        Ok(()) => Ok(done),
        // The server answered: it refused the COMMIT, which rolled back.
        Err(e) if e.as_db_error().is_some() => Err(R(e)),
        Err(e) => Err(Failure::Uncertain(e, done)),
    }
}

/// Answers one write and gives its room in the queue back.
fn answer(ctx: &Ctx, w: Write, result: Result<Done, StoreError>) {
    ctx.stats.release(w.bytes);
    fn send<T>(reply: Reply<T>, r: Result<T, StoreError>) {
        // The shard may have stopped waiting (its session closed); nothing to do then.
        let _ = reply.send(r);
    }
    let mismatch = || StoreError::Unavailable { reason: "internal: answer of another kind".into(), retry_after_ms: 0 };
    match (w.op, result) {
        (WriteOp::Append { reply, .. }, Ok(Done::Appended(a))) => send(reply, Ok(a)),
        (
            WriteOp::Edit { reply, .. } | WriteOp::Delete { reply, .. } | WriteOp::React { reply, .. },
            Ok(Done::Message(m)),
        ) => send(reply, m),
        (WriteOp::Delivered { reply, .. }, Ok(Done::Delivered(r))) => send(reply, Ok(r)),
        (WriteOp::Read { reply, .. }, Ok(Done::Read(r))) => send(reply, Ok(r)),
        (WriteOp::PushOffline { reply, .. }, Ok(Done::Pushed)) => send(reply, Ok(0)),
        (op, result) => {
            let e = result.err().unwrap_or_else(mismatch);
            match op {
                WriteOp::Append { reply, .. } => send(reply, Err(e)),
                WriteOp::Edit { reply, .. } | WriteOp::Delete { reply, .. } | WriteOp::React { reply, .. } => {
                    send(reply, Err(e))
                }
                WriteOp::Delivered { reply, .. } => send(reply, Err(e)),
                WriteOp::Read { reply, .. } => send(reply, Err(e)),
                WriteOp::PushOffline { reply, .. } => send(reply, Err(e)),
            }
        }
    }
}

fn unavailable(ctx: &Ctx, reason: &str) -> StoreError {
    StoreError::Unavailable { reason: reason.into(), retry_after_ms: ctx.reconnect_max.as_millis() as u64 }
}

/// The writer's state between batches.
struct Writer {
    ctx: Rc<Ctx>,
    conn: Option<(Client, Prepared)>,
    backlog: VecDeque<Write>,
    seqs: Seqs,
    backoff: Duration,
    /// Writes still to be committed one per transaction, after a batch the database refused.
    solo: usize,
    id: uuid::Uuid,
    batch: i64,
    /// Whether the writer has had a connection: the next one is a reconnect.
    connected_before: bool,
}

impl Writer {
    /// Answers `unavailable` to the writes at the front that waited longer than the timeout.
    fn expire(&mut self) {
        let now = Instant::now();
        while self.backlog.front().is_some_and(|w| now.duration_since(w.queued_at) >= self.ctx.write_timeout) {
            if let Some(w) = self.backlog.pop_front() {
                self.ctx.stats.refused(Refusal::Timeout);
                answer(&self.ctx, w, Err(unavailable(&self.ctx, "the database did not commit the write in time")));
            }
        }
    }

    /// How many writes from the front go into the next batch.
    fn batch_len(&mut self) -> usize {
        if self.solo > 0 {
            self.solo -= 1;
            return 1;
        }
        let (mut n, mut bytes) = (0, 0);
        for w in &self.backlog {
            if n > 0 && (n >= self.ctx.max_batch_rows || bytes + w.bytes > self.ctx.max_batch_bytes) {
                break;
            }
            n += 1;
            bytes += w.bytes;
        }
        n
    }

    /// Connects, or waits before the next attempt.
    async fn ensure_connected(&mut self) -> bool {
        if self.conn.as_ref().is_some_and(|(c, _)| !c.is_closed()) {
            return true;
        }
        self.conn = None;
        self.ctx.stats.set_up(false);
        match super::connect(&self.ctx).await {
            Ok(conn) => {
                if self.connected_before {
                    self.ctx.stats.reconnected();
                    tracing::info!("store writer reconnected to Postgres");
                }
                self.connected_before = true;
                self.backoff = MIN_BACKOFF;
                self.ctx.stats.set_up(true);
                self.conn = Some(conn);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = self.backoff.as_millis() as u64, "store writer cannot reach Postgres");
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(self.ctx.reconnect_max);
                false
            }
        }
    }

    fn put_back(&mut self, batch: Vec<Write>) {
        for w in batch.into_iter().rev() {
            self.backlog.push_front(w);
        }
    }

    /// After an uncertain COMMIT: reconnects and reads whether batch `n` committed. `None`
    /// when the database stayed out of reach until the batch's writes timed out.
    async fn resolve(&mut self, n: i64, oldest: Instant) -> Option<bool> {
        while oldest.elapsed() < self.ctx.write_timeout {
            if !self.ensure_connected().await {
                continue;
            }
            let (client, _) = self.conn.as_ref()?;
            match sql::committed(client, self.id, n).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the writer's last batch");
                    self.conn = None;
                }
            }
        }
        None
    }

    async fn run_one(&mut self) {
        let take = self.batch_len();
        let batch: Vec<Write> = self.backlog.drain(..take).collect();
        let Some(oldest) = batch.first().map(|w| w.queued_at) else { return };
        self.batch += 1;
        let n = self.batch;
        let started = Instant::now();
        let Some((client, prepared)) = self.conn.as_mut() else { return self.put_back(batch) };
        let run = commit(client, prepared, &batch, &mut self.seqs, &self.ctx, (self.id, n));
        let outcome = tokio::time::timeout(self.ctx.write_timeout, run).await;
        let ctx = self.ctx.clone();
        match outcome {
            Ok(Ok(done)) => {
                self.ctx.stats.committed(batch.len(), started.elapsed());
                for (w, d) in batch.into_iter().zip(done) {
                    answer(&ctx, w, Ok(d));
                }
            }
            Ok(Err(Failure::Conflict)) => {
                self.seqs.0.clear();
                tracing::warn!("the dedup index kept changing under a batch; retrying its writes one by one");
                if batch.len() == 1 {
                    self.ctx.stats.refused(Refusal::Failed);
                    for w in batch {
                        answer(&ctx, w, Err(unavailable(&ctx, "conflicting writes")));
                    }
                } else {
                    self.solo = batch.len();
                    self.put_back(batch);
                }
            }
            Ok(Err(Failure::Rolledback(e))) if !transient(&e) => {
                self.seqs.0.clear();
                if batch.len() == 1 {
                    tracing::error!(error = %e, "Postgres refused a write");
                    self.ctx.stats.refused(Refusal::Failed);
                    for w in batch {
                        answer(&ctx, w, Err(unavailable(&ctx, "the database refused the write")));
                    }
                } else {
                    tracing::warn!(error = %e, writes = batch.len(), "Postgres refused a batch; retrying its writes one by one");
                    self.solo = batch.len();
                    self.put_back(batch);
                }
            }
            Ok(Err(Failure::Rolledback(e))) => {
                tracing::warn!(error = %e, "a batch failed on the connection; retrying it");
                self.seqs.0.clear();
                self.conn = None;
                self.put_back(batch);
            }
            Ok(Err(Failure::Uncertain(e, done))) => {
                tracing::warn!(error = %e, "the connection was lost during a COMMIT; checking whether it committed");
                self.seqs.0.clear();
                self.conn = None;
                match self.resolve(n, oldest).await {
                    Some(true) => {
                        self.ctx.stats.committed(batch.len(), started.elapsed());
                        for (w, d) in batch.into_iter().zip(done) {
                            answer(&ctx, w, Ok(d));
                        }
                    }
                    Some(false) => self.put_back(batch),
                    None => self.give_up(batch),
                }
            }
            Err(_) => {
                tracing::warn!(timeout_ms = ctx.write_timeout.as_millis() as u64, "a batch did not commit in time");
                self.seqs.0.clear();
                self.conn = None;
                // Its answers were lost with the statement: if it committed, a client's retry
                // with the same msgId finds the message; if not, the writes wait again.
                match self.resolve(n, oldest).await {
                    Some(false) => self.put_back(batch),
                    _ => self.give_up(batch),
                }
            }
        }
    }

    fn give_up(&mut self, batch: Vec<Write>) {
        for w in batch {
            self.ctx.stats.refused(Refusal::Timeout);
            answer(&self.ctx, w, Err(unavailable(&self.ctx, "the database did not confirm the commit in time")));
        }
    }
}

/// The batched writer: runs until the node stops (every shard has ended, or let go of the
/// queue) and what was queued is committed or timed out.
pub(super) async fn run_batched(ctx: Rc<Ctx>, mut rx: UnboundedReceiver<Write>, stop: Rc<ServiceContext>) {
    let mut w = Writer {
        ctx,
        conn: None,
        backlog: VecDeque::new(),
        seqs: Seqs::default(),
        backoff: MIN_BACKOFF,
        solo: 0,
        id: uuid::Uuid::now_v7(),
        batch: 0,
        connected_before: false,
    };
    let mut open = true;
    loop {
        let mut stopping = false;
        if open && w.backlog.is_empty() {
            tokio::select! {
                x = rx.recv() => match x {
                    Some(x) => w.backlog.push_back(x),
                    None => open = false,
                },
                // The shards have ended: nothing more can be queued after what is there now.
                () = stop.stopping() => stopping = true,
            }
        }
        while open {
            match rx.try_recv() {
                Ok(x) => w.backlog.push_back(x),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    open = !stopping;
                    break;
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        w.expire();
        if w.backlog.is_empty() {
            if open {
                continue;
            }
            break;
        }
        if w.ensure_connected().await {
            w.run_one().await;
        }
    }
    tracing::debug!("store writer stopped");
}

/// The `per_message` baseline: each append is one autocommitted `INSERT` on a pooled
/// connection, answered after its own commit; other writes are one transaction each. What a
/// user would write without batching, kept only for `bench/store` to compare against.
pub(super) async fn run_per_message(ctx: Rc<Ctx>, mut rx: UnboundedReceiver<Write>, stop: Rc<ServiceContext>) {
    let pool = Rc::new(std::cell::RefCell::new(Vec::<(Client, Prepared)>::new()));
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(ctx.baseline_pool_size));
    let mut seqs = Seqs::default();
    loop {
        let next = tokio::select! {
            x = rx.recv() => x,
            () = stop.stopping() => rx.try_recv().ok(),
        };
        let Some(mut w) = next else { break };
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let mut conn = match pool.borrow_mut().pop() {
            Some(c) if !c.0.is_closed() => Some(c),
            _ => None,
        };
        if conn.is_none() {
            conn = super::connect(&ctx).await.ok();
        }
        let Some((client, prepared)) = conn else {
            answer(&ctx, w, Err(unavailable(&ctx, "cannot connect to the database")));
            continue;
        };
        // Sequence numbers in arrival order: a new conversation's last seq is read here.
        let mut stored = None;
        if let WriteOp::Append { msg, .. } = &mut w.op {
            let c = msg.conversation.as_str();
            if !seqs.missing(std::iter::once(c)).is_empty() {
                match sql::last_seqs(&client, &prepared, &[c]).await {
                    Ok(known) => seqs.learn(known),
                    Err(_) => seqs.learn(vec![(c.to_owned(), 0)]),
                }
            }
            stored = Some(sql::stored(msg, MessageId::now_v7(), seqs.next(c)));
        }
        let (ctx, pool) = (ctx.clone(), pool.clone());
        tokio::task::spawn_local(async move {
            let mut client = client;
            let t0 = Instant::now();
            let result = match &stored {
                Some(m) => match tokio::time::timeout(ctx.write_timeout, sql::insert_one(&client, m)).await {
                    Ok(Ok(_)) => Ok(Done::Appended(Appended { message: m.clone(), duplicate: false })),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".into()),
                },
                None => {
                    let mut seqs = Seqs::default();
                    let batch = [w];
                    let r = commit(&mut client, &prepared, &batch, &mut seqs, &ctx, (uuid::Uuid::nil(), 0)).await;
                    let [x] = batch;
                    w = x;
                    match r {
                        Ok(mut d) => d.pop().ok_or_else(|| "no answer".to_string()),
                        Err(Failure::Rolledback(e) | Failure::Uncertain(e, _)) => Err(e.to_string()),
                        Err(Failure::Conflict) => Err("conflicting writes".into()),
                    }
                }
            };
            match result {
                Ok(d) => {
                    ctx.stats.committed(1, t0.elapsed());
                    answer(&ctx, w, Ok(d));
                }
                Err(reason) => {
                    ctx.stats.refused(Refusal::Failed);
                    answer(&ctx, w, Err(unavailable(&ctx, &reason)));
                }
            }
            if !client.is_closed() {
                pool.borrow_mut().push((client, prepared));
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::*;
    use crate::store::{ConversationKey, StoreConfig};

    fn writer(rows: usize, bytes: usize, timeout_ms: u64) -> Writer {
        let mut cfg = StoreConfig::default();
        cfg.postgres.max_batch_rows = rows;
        cfg.postgres.max_batch_bytes = bytes;
        cfg.postgres.write_timeout_ms = timeout_ms;
        let stats = Arc::new(super::super::PgStats::new(100, 1 << 20));
        Writer {
            ctx: Rc::new(super::super::ctx(&cfg, stats)),
            conn: None,
            backlog: VecDeque::new(),
            seqs: Seqs::default(),
            backoff: MIN_BACKOFF,
            solo: 0,
            id: uuid::Uuid::nil(),
            batch: 0,
            connected_before: false,
        }
    }

    /// A delivery mark of `bytes`, queued `age` ago, admitted against the writer's bound.
    fn write(w: &Writer, bytes: usize, age: Duration) -> (Write, oneshot::Receiver<Result<bool, StoreError>>) {
        let (reply, rx) = oneshot::channel();
        w.ctx.stats.admit(bytes).expect("room in the queue");
        let queued_at = Instant::now().checked_sub(age).expect("a machine up longer than the test's ages");
        let op = WriteOp::Delivered { conversation: ConversationKey::room("t", "r"), id: MessageId::nil(), reply };
        (Write { op, bytes, queued_at }, rx)
    }

    fn fill(w: &mut Writer, sizes: &[usize]) {
        for &b in sizes {
            let (x, _) = write(w, b, Duration::ZERO);
            w.backlog.push_back(x);
        }
    }

    #[test]
    fn a_batch_stops_at_its_row_and_byte_caps() {
        let mut w = writer(3, 100, 5000);
        fill(&mut w, &[10; 5]);
        assert_eq!(w.batch_len(), 3, "the row cap");
        w.backlog.clear();
        fill(&mut w, &[40; 5]);
        assert_eq!(w.batch_len(), 2, "the byte cap: 80 fit, 120 do not");
        w.backlog.clear();
        fill(&mut w, &[500, 10]);
        assert_eq!(w.batch_len(), 1, "a write over the byte cap goes alone, never stuck");
        w.backlog.clear();
        fill(&mut w, &[1; 5]);
        w.solo = 2;
        assert_eq!((w.batch_len(), w.batch_len(), w.batch_len()), (1, 1, 3), "one by one after a refused batch");
    }

    #[test]
    fn writes_older_than_the_timeout_are_answered_unavailable_and_leave_the_queue() {
        let mut w = writer(10, 1000, 50);
        let (old, mut old_rx) = write(&w, 10, Duration::from_millis(80));
        let (new, mut new_rx) = write(&w, 10, Duration::ZERO);
        w.backlog.extend([old, new]);
        w.expire();
        assert_eq!(w.backlog.len(), 1, "the fresh write stays");
        match old_rx.try_recv() {
            Ok(Err(StoreError::Unavailable { retry_after_ms, .. })) => assert!(retry_after_ms > 0),
            other => panic!("the old write is answered unavailable, got {other:?}"),
        }
        assert!(new_rx.try_recv().is_err(), "the fresh write is not answered yet");
        assert_eq!(w.ctx.stats.queued_writes(), 1, "the answered write gave its room back");
    }
}
