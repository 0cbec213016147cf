//! The Postgres store: the store of record, reached through the sidecar.
//!
//! - **Shards never wait on the database.** Each shard's [`PgStore`] hands every operation to
//!   the sidecar thread over an unbounded channel whose size is bounded by admission
//!   ([`PgStats::admit`]: `max_queued_writes` and `max_queued_bytes`, node-wide); a write past
//!   the bound is answered `unavailable` at once. The future a shard awaits is a oneshot answer.
//! - **Writes are batched** by the writer ([`writer`]): one connection, one transaction per
//!   batch, answered after the commit, so an ack means durable.
//! - **Reads do not queue behind writes**: history, single messages, read state and the offline
//!   queue at login run on a pool of `read_pool_size` connections of their own.
//! - **A user's offline queue is read after the user's own pending pushes** (both happen on the
//!   user's home shard), so a login never misses a message queued a moment before.
//!
//! Schema, guarantees and failure behaviour: `docs/storage.md`; why batches and acks work this
//! way: ADR 010.

mod sql;
mod stats;
mod writer;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::{Client, NoTls};

pub use stats::PgStats;

use super::config::CommitMode;
use super::{
    check_body, Appended, BackendCheck, ConversationKey, Cursor, Message, MessageId, NewMessage, Page, Receipt, Store,
    StoreConfig, StoreError, StoreFuture, StoreStats, MAX_CLIENT_MSG_ID_BYTES, MAX_EMOJI_BYTES,
};
use crate::names::validate_name;
use crate::sidecar::{ServiceContext, SidecarService};

/// Where an operation's answer goes.
type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write on its way to the writer.
struct Write {
    op: WriteOp,
    /// What it counts against `max_queued_bytes` and `max_batch_bytes`.
    bytes: usize,
    queued_at: Instant,
}

enum WriteOp {
    Append {
        msg: NewMessage,
        reply: Reply<Appended>,
    },
    Edit {
        conversation: ConversationKey,
        id: MessageId,
        editor: String,
        body: String,
        now_ms: i64,
        reply: Reply<Message>,
    },
    Delete {
        conversation: ConversationKey,
        id: MessageId,
        by: String,
        now_ms: i64,
        reply: Reply<Message>,
    },
    React {
        conversation: ConversationKey,
        id: MessageId,
        user: String,
        emoji: String,
        add: bool,
        reply: Reply<Message>,
    },
    Delivered {
        conversation: ConversationKey,
        id: MessageId,
        reply: Reply<bool>,
    },
    Read {
        tenant: String,
        reader: String,
        conversation: ConversationKey,
        ids: Vec<MessageId>,
        reply: Reply<Vec<Receipt>>,
    },
    PushOffline {
        tenant: String,
        user: String,
        id: MessageId,
        reply: Reply<usize>,
    },
}

/// A read on its way to the read pool.
enum ReadOp {
    Get { conversation: ConversationKey, id: MessageId, reply: Reply<Option<Message>> },
    History { conversation: ConversationKey, before: u64, limit: usize, reply: Reply<Page> },
    ReadState { tenant: String, reader: String, conversation: ConversationKey, reply: Reply<u64> },
    TakeOffline { tenant: String, user: String, max: usize, reply: Reply<Vec<Message>> },
    OfflineLen { tenant: String, user: String, reply: Reply<usize> },
}

/// What the sidecar's tasks share: the settings they use, and the counters.
struct Ctx {
    url: String,
    connect_timeout: Duration,
    write_timeout: Duration,
    read_timeout: Duration,
    reconnect_max: Duration,
    health_interval: Duration,
    max_batch_rows: usize,
    max_batch_bytes: usize,
    read_pool_size: usize,
    baseline_pool_size: usize,
    commit: CommitMode,
    max_edits: usize,
    max_reactions: usize,
    stats: Arc<PgStats>,
}

/// Opens a connection (its driver runs as a task on the sidecar) and prepares the writer's
/// statements on it.
async fn connect(ctx: &Ctx) -> Result<(Client, sql::Prepared), String> {
    let open = async {
        let (client, connection) = tokio_postgres::connect(&ctx.url, NoTls).await.map_err(|e| e.to_string())?;
        tokio::task::spawn_local(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "Postgres connection ended");
            }
        });
        let prepared = sql::Prepared::new(&client).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((client, prepared))
    };
    match tokio::time::timeout(ctx.connect_timeout, open).await {
        Ok(r) => r,
        Err(_) => Err(format!("no connection within {} ms", ctx.connect_timeout.as_millis())),
    }
}

/// Builds the Postgres store of a node: the sidecar service that talks to the database, and the
/// handle every shard makes its [`PgStore`] from.
pub fn build(cfg: &StoreConfig) -> (PgService, PgHandle) {
    let pg = &cfg.postgres;
    let stats = Arc::new(PgStats::new(pg.max_queued_writes, pg.max_queued_bytes));
    // The baseline's one dispatcher spreads its writes over its own pool.
    let writers = if pg.commit == CommitMode::PerMessage { 1 } else { pg.writers };
    let (writes, write_rx): (Vec<_>, Vec<_>) = (0..writers).map(|_| mpsc::unbounded_channel()).unzip();
    let writes: Arc<[mpsc::UnboundedSender<Write>]> = writes.into();
    let (reads, read_rx) = mpsc::unbounded_channel();
    let ctx = ctx(cfg, stats.clone());
    (PgService { ctx, write_rx, read_rx }, PgHandle { writes, reads, stats, cfg: Arc::new(cfg.clone()) })
}

fn ctx(cfg: &StoreConfig, stats: Arc<PgStats>) -> Ctx {
    let pg = &cfg.postgres;
    Ctx {
        url: pg.url.clone(),
        connect_timeout: pg.connect_timeout(),
        write_timeout: Duration::from_millis(pg.write_timeout_ms),
        read_timeout: Duration::from_millis(pg.read_timeout_ms),
        reconnect_max: Duration::from_millis(pg.reconnect_max_ms),
        health_interval: Duration::from_millis(pg.health_interval_ms),
        max_batch_rows: pg.max_batch_rows,
        max_batch_bytes: pg.max_batch_bytes,
        read_pool_size: pg.read_pool_size,
        baseline_pool_size: pg.baseline_pool_size,
        commit: pg.commit,
        max_edits: cfg.max_edits_per_message,
        max_reactions: cfg.max_reactions_per_message,
        stats,
    }
}

/// The shards' side of the Postgres store: `Send`, cloned into every shard.
#[derive(Clone)]
pub struct PgHandle {
    /// One queue per writer; a conversation's writes all go to one (see [`PgStore::write`]).
    writes: Arc<[mpsc::UnboundedSender<Write>]>,
    reads: mpsc::UnboundedSender<(ReadOp, Instant)>,
    stats: Arc<PgStats>,
    cfg: Arc<StoreConfig>,
}

impl PgHandle {
    /// The store of one shard; call on the shard's thread.
    pub fn store(&self) -> PgStore {
        PgStore { handle: self.clone(), offline: Rc::new(RefCell::new(HashMap::new())) }
    }
}

/// Pushes of one user's offline queue still waiting for their commit, and the logins waiting
/// for them.
#[derive(Default)]
struct Pending {
    pushes: usize,
    waiting: Vec<Waker>,
}

type PendingPushes = Rc<RefCell<HashMap<(Arc<str>, Arc<str>), Pending>>>;

/// One shard's Postgres store. See the module doc.
pub struct PgStore {
    handle: PgHandle,
    offline: PendingPushes,
}

fn ready<T: 'static>(r: Result<T, StoreError>) -> StoreFuture<T> {
    Box::pin(std::future::ready(r))
}

fn stopped() -> StoreError {
    StoreError::Unavailable { reason: "the store has stopped".into(), retry_after_ms: 1000 }
}

/// Awaits an answer; a writer or reader that went away answers `unavailable`.
async fn answer<T>(rx: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    rx.await.unwrap_or_else(|_| Err(stopped()))
}

impl PgStore {
    /// Queues a write of `bytes` for the writer of `key` (a conversation, or a user's offline
    /// queue), or refuses it at the queue's bound. One key's writes all go to one writer, which
    /// commits them in order.
    fn write<T: 'static>(&self, key: &str, bytes: usize, op: impl FnOnce(Reply<T>) -> WriteOp) -> StoreFuture<T> {
        if let Err(e) = self.handle.stats.admit(bytes) {
            return ready(Err(e));
        }
        let (tx, rx) = oneshot::channel();
        let w = Write { op: op(tx), bytes, queued_at: Instant::now() };
        let writer = super::stable_shard(&[key], self.handle.writes.len());
        if self.handle.writes.get(writer).is_none_or(|q| q.send(w).is_err()) {
            self.handle.stats.release(bytes);
            return ready(Err(stopped()));
        }
        Box::pin(answer(rx))
    }

    fn read<T: 'static>(&self, op: impl FnOnce(Reply<T>) -> ReadOp) -> StoreFuture<T> {
        let (tx, rx) = oneshot::channel();
        if self.handle.reads.send((op(tx), Instant::now())).is_err() {
            return ready(Err(stopped()));
        }
        Box::pin(answer(rx))
    }

    fn cfg(&self) -> &StoreConfig {
        &self.handle.cfg
    }
}

/// Ends one pending push when dropped, answered or not, and wakes the logins waiting for the
/// user's pushes once none is left.
struct PushGuard {
    pending: PendingPushes,
    key: (Arc<str>, Arc<str>),
}

impl Drop for PushGuard {
    fn drop(&mut self) {
        let mut pending = self.pending.borrow_mut();
        if let Some(p) = pending.get_mut(&self.key) {
            p.pushes -= 1;
            if p.pushes == 0 {
                if let Some(p) = pending.remove(&self.key) {
                    p.waiting.into_iter().for_each(Waker::wake);
                }
            }
        }
    }
}

impl Store for PgStore {
    fn append(&self, msg: NewMessage) -> StoreFuture<Appended> {
        if let Err(e) = check_body(&msg.body, self.cfg().max_body_bytes) {
            return ready(Err(e));
        }
        if let Some(cid) = &msg.client_msg_id {
            if let Err(e) = validate_name("client message id", cid, MAX_CLIENT_MSG_ID_BYTES) {
                return ready(Err(e.into()));
            }
        }
        let bytes = msg.body.len()
            + msg.conversation.as_str().len()
            + msg.author.len()
            + msg.client_msg_id.as_ref().map_or(0, String::len)
            + 128;
        let key = msg.conversation.clone();
        self.write(key.as_str(), bytes, |reply| WriteOp::Append { msg, reply })
    }

    fn get(&self, conversation: &ConversationKey, id: MessageId) -> StoreFuture<Option<Message>> {
        let conversation = conversation.clone();
        self.read(|reply| ReadOp::Get { conversation, id, reply })
    }

    fn edit(
        &self,
        conversation: &ConversationKey,
        id: MessageId,
        editor: &str,
        body: String,
        now_ms: i64,
    ) -> StoreFuture<Message> {
        if let Err(e) = check_body(&body, self.cfg().max_body_bytes) {
            return ready(Err(e));
        }
        let key = conversation.as_str();
        let (conversation, editor) = (conversation.clone(), editor.to_owned());
        self.write(key, body.len() + 128, |reply| WriteOp::Edit { conversation, id, editor, body, now_ms, reply })
    }

    fn delete(&self, conversation: &ConversationKey, id: MessageId, by: &str, now_ms: i64) -> StoreFuture<Message> {
        let key = conversation.as_str();
        let (conversation, by) = (conversation.clone(), by.to_owned());
        self.write(key, 128, |reply| WriteOp::Delete { conversation, id, by, now_ms, reply })
    }

    fn react(
        &self,
        conversation: &ConversationKey,
        id: MessageId,
        user: &str,
        emoji: &str,
        add: bool,
    ) -> StoreFuture<Message> {
        if let Err(e) = validate_name("emoji", emoji, MAX_EMOJI_BYTES) {
            return ready(Err(e.into()));
        }
        let key = conversation.as_str();
        let (conversation, user, emoji) = (conversation.clone(), user.to_owned(), emoji.to_owned());
        self.write(key, 128, |reply| WriteOp::React { conversation, id, user, emoji, add, reply })
    }

    fn history(&self, conversation: &ConversationKey, before: Option<Cursor>, limit: usize) -> StoreFuture<Page> {
        let max = self.cfg().max_history_page;
        let limit = if limit == 0 { max } else { limit.min(max) };
        let conversation = conversation.clone();
        let before = before.map_or(u64::MAX, Cursor::seq);
        self.read(|reply| ReadOp::History { conversation, before, limit, reply })
    }

    fn mark_delivered(&self, conversation: &ConversationKey, id: MessageId) -> StoreFuture<bool> {
        let key = conversation.as_str();
        let conversation = conversation.clone();
        self.write(key, 64, |reply| WriteOp::Delivered { conversation, id, reply })
    }

    fn mark_read(
        &self,
        tenant: &str,
        reader: &str,
        conversation: &ConversationKey,
        ids: &[MessageId],
    ) -> StoreFuture<Vec<Receipt>> {
        let key = conversation.as_str();
        let (tenant, reader, conversation, ids) =
            (tenant.to_owned(), reader.to_owned(), conversation.clone(), ids.to_vec());
        self.write(key, 64 + 16 * ids.len(), |reply| WriteOp::Read { tenant, reader, conversation, ids, reply })
    }

    fn read_state(&self, tenant: &str, reader: &str, conversation: &ConversationKey) -> StoreFuture<u64> {
        let (tenant, reader, conversation) = (tenant.to_owned(), reader.to_owned(), conversation.clone());
        self.read(|reply| ReadOp::ReadState { tenant, reader, conversation, reply })
    }

    fn push_offline(&self, tenant: &str, user: &str, message: Message) -> StoreFuture<usize> {
        let key: (Arc<str>, Arc<str>) = (tenant.into(), user.into());
        // The message's conversation's writer: it committed the message, so the push cannot
        // reach the database before it.
        let writer_key = message.conversation.clone();
        let (tenant, user, id) = (tenant.to_owned(), user.to_owned(), message.id);
        let push = self.write(writer_key.as_str(), 64, |reply| WriteOp::PushOffline { tenant, user, id, reply });
        self.offline.borrow_mut().entry(key.clone()).or_default().pushes += 1;
        let guard = PushGuard { pending: self.offline.clone(), key };
        Box::pin(async move {
            let r = push.await;
            drop(guard);
            r
        })
    }

    fn take_offline(&self, tenant: &str, user: &str) -> StoreFuture<Vec<Message>> {
        let key: (Arc<str>, Arc<str>) = (tenant.into(), user.into());
        let pending = self.offline.clone();
        let (tenant, user, max) = (tenant.to_owned(), user.to_owned(), self.cfg().max_offline_per_user);
        let reads = self.handle.reads.clone();
        Box::pin(async move {
            // The user's own pushes first: each ends with its commit or its timeout.
            std::future::poll_fn(|cx| match pending.borrow_mut().get_mut(&key) {
                Some(p) => {
                    p.waiting.push(cx.waker().clone());
                    Poll::Pending
                }
                None => Poll::Ready(()),
            })
            .await;
            let (tx, rx) = oneshot::channel();
            reads
                .send((ReadOp::TakeOffline { tenant, user, max, reply: tx }, Instant::now()))
                .map_err(|_| stopped())?;
            answer(rx).await
        })
    }

    fn offline_len(&self, tenant: &str, user: &str) -> StoreFuture<usize> {
        let (tenant, user) = (tenant.to_owned(), user.to_owned());
        self.read(|reply| ReadOp::OfflineLen { tenant, user, reply })
    }

    /// Nothing is evicted from the database: all zeros.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    fn check(&self) -> Option<BackendCheck> {
        Some(self.handle.stats.check())
    }

    fn render_metrics(&self, out: &mut String) {
        self.handle.stats.render(out);
    }
}

/// The Postgres store's sidecar service: the writer, the read pool and the health pinger.
pub struct PgService {
    ctx: Ctx,
    write_rx: Vec<mpsc::UnboundedReceiver<Write>>,
    read_rx: mpsc::UnboundedReceiver<(ReadOp, Instant)>,
}

impl SidecarService for PgService {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn run(self: Box<Self>, sctx: ServiceContext) -> Pin<Box<dyn Future<Output = ()>>> {
        let PgService { ctx, write_rx, read_rx } = *self;
        let ctx = Rc::new(ctx);
        Box::pin(async move {
            sctx.set_state("starting");
            let sctx = Rc::new(sctx);
            let readers = tokio::task::spawn_local(serve_reads(ctx.clone(), read_rx, sctx.clone()));
            let pinger = tokio::task::spawn_local(ping(ctx.clone(), sctx.clone()));
            let writers: Vec<_> = write_rx
                .into_iter()
                .map(|rx| match ctx.commit {
                    CommitMode::Batched => tokio::task::spawn_local(writer::run_batched(ctx.clone(), rx, sctx.clone())),
                    CommitMode::PerMessage => {
                        tokio::task::spawn_local(writer::run_per_message(ctx.clone(), rx, sctx.clone()))
                    }
                })
                .collect();
            for w in writers {
                let _ = w.await;
            }
            // The writes are done; the reads end with the shards.
            let _ = readers.await;
            pinger.abort();
        })
    }
}

/// Pings the database every `health_interval_ms` on a connection of its own, for `/health`.
async fn ping(ctx: Rc<Ctx>, sctx: Rc<ServiceContext>) {
    let mut conn: Option<Client> = None;
    loop {
        if conn.as_ref().is_none_or(Client::is_closed) {
            conn = connect(&ctx).await.ok().map(|(c, _)| c);
        }
        let t0 = Instant::now();
        let ok = match &conn {
            Some(c) => matches!(tokio::time::timeout(ctx.connect_timeout, c.simple_query("SELECT 1")).await, Ok(Ok(_))),
            None => false,
        };
        ctx.stats.set_up(ok);
        if ok {
            ctx.stats.pinged(t0.elapsed().as_micros() as u64);
            sctx.set_state("ok");
        } else {
            conn = None;
            sctx.set_state("down");
        }
        tokio::time::sleep(ctx.health_interval).await;
    }
}

/// Serves reads on up to `read_pool_size` connections, each read a task of its own.
async fn serve_reads(ctx: Rc<Ctx>, mut rx: mpsc::UnboundedReceiver<(ReadOp, Instant)>, stop: Rc<ServiceContext>) {
    let pool: Rc<RefCell<Vec<Client>>> = Rc::new(RefCell::new(Vec::new()));
    let permits = Arc::new(Semaphore::new(ctx.read_pool_size));
    loop {
        let next = tokio::select! {
            x = rx.recv() => x,
            // The shards have ended: no one waits for a read any more.
            () = stop.stopping() => None,
        };
        let Some((op, queued_at)) = next else { break };
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let (ctx, pool) = (ctx.clone(), pool.clone());
        tokio::task::spawn_local(async move {
            let left = ctx.read_timeout.saturating_sub(queued_at.elapsed());
            let conn = pool.borrow_mut().pop().filter(|c| !c.is_closed());
            let for_run = ctx.clone();
            let run = async move {
                let mut client = match conn {
                    Some(c) => c,
                    None => connect(&for_run).await.map_err(|e| op_failed(&e))?.0,
                };
                let r = read_one(&mut client, op).await;
                Ok::<_, String>((client, r))
            };
            match tokio::time::timeout(left, run).await {
                Ok(Ok((client, ok))) => {
                    ctx.stats.read_done(ok);
                    if !client.is_closed() {
                        pool.borrow_mut().push(client);
                    }
                }
                Ok(Err(e)) => {
                    ctx.stats.read_done(false);
                    tracing::warn!(error = %e, "store read failed");
                }
                // The read's reply was dropped with it: the shard gets `unavailable`.
                Err(_) => ctx.stats.read_done(false),
            }
            drop(permit);
        });
    }
}

fn op_failed(e: &str) -> String {
    format!("cannot connect to the database: {e}")
}

/// Runs one read and answers it; false when the database failed it.
async fn read_one(c: &mut Client, op: ReadOp) -> bool {
    fn send<T>(reply: Reply<T>, r: Result<T, tokio_postgres::Error>) -> bool {
        let ok = r.is_ok();
        let _ = reply
            .send(r.map_err(|e| StoreError::Unavailable { reason: format!("read failed: {e}"), retry_after_ms: 500 }));
        ok
    }
    match op {
        ReadOp::Get { conversation, id, reply } => send(reply, sql::get(&*c, &conversation, id).await),
        ReadOp::History { conversation, before, limit, reply } => {
            let r = sql::history(&*c, &conversation, before, limit).await.map(|(messages, more)| {
                let next_cursor = match messages.last() {
                    Some(oldest) if more => Some(Cursor::before_seq(oldest.seq)),
                    _ => None,
                };
                Page { messages, next_cursor }
            });
            send(reply, r)
        }
        ReadOp::ReadState { tenant, reader, conversation, reply } => {
            send(reply, sql::read_state(&*c, &tenant, &reader, &conversation).await)
        }
        ReadOp::TakeOffline { tenant, user, max, reply } => {
            send(reply, sql::take_offline(c, &tenant, &user, max).await)
        }
        ReadOp::OfflineLen { tenant, user, reply } => send(reply, sql::offline_len(&*c, &tenant, &user).await),
    }
}
