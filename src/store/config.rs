//! `[store]`: which message store a node uses and the bounds of the in-memory one.
//!
//! [`StoreSection`] is the file's shape (every field defaulted, unknown keys refused);
//! [`resolve`] validates it into [`StoreConfig`], which the store uses. Every bound exists so
//! that no client can grow a shard's memory without limit; each one's eviction rule is written
//! on the field and in `docs/storage.md`.

use serde::{Deserialize, Serialize};

/// Which implementation of [`super::Store`] a node runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// [`super::MemoryStore`]: one per shard, lost on restart.
    #[default]
    Memory,
    /// [`super::postgres::PgStore`]: the store of record in Postgres (`[store.postgres]`),
    /// written through the sidecar in batched commits.
    Postgres,
}

/// How the Postgres store commits messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitMode {
    /// Everything queued while the previous commit was in flight goes in the next one
    /// transaction, up to `max_batch_rows` and `max_batch_bytes`.
    #[default]
    Batched,
    /// One autocommitted `INSERT` per message through a pool of `baseline_pool_size`
    /// connections, acked after its own commit: what a user would otherwise write, kept as the
    /// baseline `bench/store` measures against. Not for production.
    PerMessage,
}

/// `[store]` as written in `imks.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `"memory"` (one in-memory store per shard, lost on restart) or `"postgres"` (the store
    /// of record, `[store.postgres]`). Default `"memory"`. The bounds below are the memory
    /// store's, except `max_history_page`, `max_body_bytes`, `max_edits_per_message`,
    /// `max_reactions_per_message` and `max_offline_per_user`, which both stores apply.
    pub backend: StoreBackend,
    /// Most conversations one shard keeps; one more evicts the conversation appended to least
    /// recently, whole (messages and read state). Default 100000.
    pub max_conversations: usize,
    /// Most messages kept per conversation; one more drops that conversation's oldest message,
    /// so its history starts later. Default 10000.
    pub max_messages_per_conversation: usize,
    /// Most messages one shard keeps over all its conversations (what bounds its memory: about
    /// 0.5 KiB per short message); past it the conversations appended to least recently are
    /// evicted whole, never the one being appended to. Default 1000000.
    pub max_messages: usize,
    /// Most messages queued for one offline user; one more drops the oldest queued message and
    /// counts it in [`super::StoreStats::dropped_offline`]. Default 100000.
    pub max_offline_per_user: usize,
    /// Most messages in all the offline queues of one shard; past it the queues pushed to least
    /// recently are dropped whole (never the one being pushed to), their messages counted as
    /// dropped. Default 1000000.
    pub max_offline_messages: usize,
    /// Most users with an offline queue on one shard; one more drops the whole queue of the user
    /// pushed to least recently, counting its messages as dropped. Default 100000.
    pub max_offline_users: usize,
    /// Most `(tenant, author, client_msg_id)` entries remembered for deduplication, per shard;
    /// one more forgets the oldest, so a very old id is stored again. Default 100000.
    pub max_dedup_entries: usize,
    /// Most messages one history page returns; larger requests are cut to it. Default 100.
    pub max_history_page: usize,
    /// Most bytes in a message body, at append and at edit; more is refused. Default 16384.
    pub max_body_bytes: usize,
    /// Most previous bodies kept per message; one more edit forgets the oldest. Default 100.
    pub max_edits_per_message: usize,
    /// Most (emoji, user) reactions per message; one more is refused. Default 1000.
    pub max_reactions_per_message: usize,
    /// Most readers whose read state a conversation keeps; one more forgets the reader who
    /// marked least recently (their read state starts again from 0). Default 10000.
    pub max_readers_per_conversation: usize,
    /// `[store.postgres]`: the database of the Postgres store, used by `backend = "postgres"`
    /// and by `imks migrate`.
    pub postgres: PostgresSection,
}

/// `[store.postgres]` as written in `imks.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSection {
    /// The database, as a `postgres://user:password@host:port/database` URL or a key=value
    /// string. Default `postgres://postgres@127.0.0.1:5432/imks`. Never printed with its
    /// password: `imks config check` leaves `[store]` out and error messages show `***`.
    pub url: String,
    /// How long connecting may take before it counts as failed, in milliseconds. Default 5000.
    pub connect_timeout_ms: u64,
    /// `"batched"` (the default) or `"per_message"`, the naive baseline the store benchmark
    /// compares with; see [`CommitMode`].
    pub commit: CommitMode,
    /// Writer connections. Conversations are spread over them by a hash of their key, so one
    /// conversation's writes commit in order on one connection while the writers commit in
    /// parallel. Default 1: on a machine of few cores a second writer's backend competes with
    /// the first for the same CPU and slows both (measured on 2 cores, docs/storage.md).
    pub writers: usize,
    /// Connections for reads (history, the offline queue at login, single messages), apart
    /// from the writer's one, so reads never wait behind writes. Default 2.
    pub read_pool_size: usize,
    /// Connections of the `per_message` baseline. Default 16.
    pub baseline_pool_size: usize,
    /// Most writes in one commit. Default 2000.
    pub max_batch_rows: usize,
    /// Most bytes (bodies, names and ids) in one commit. Default 4194304 (4 MiB).
    pub max_batch_bytes: usize,
    /// Most writes waiting for the database, node-wide; one more is refused with
    /// `unavailable`. Default 100000.
    pub max_queued_writes: usize,
    /// Most bytes of writes waiting for the database, node-wide. Default 67108864 (64 MiB).
    pub max_queued_bytes: usize,
    /// How long a write may wait for its commit, queued or retried while the database is down
    /// or slow, before its sender gets `unavailable`. Default 5000.
    pub write_timeout_ms: u64,
    /// How long a read may take before it fails with `unavailable`. Default 5000.
    pub read_timeout_ms: u64,
    /// The longest wait between reconnect attempts; waits double from 50 ms up to it.
    /// Default 2000.
    pub reconnect_max_ms: u64,
    /// How often the database is pinged for `/health` (`checks.postgres`), in milliseconds.
    /// Default 1000.
    pub health_interval_ms: u64,
}

impl Default for PostgresSection {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/imks".into(),
            connect_timeout_ms: 5000,
            commit: CommitMode::Batched,
            writers: 1,
            read_pool_size: 2,
            baseline_pool_size: 16,
            max_batch_rows: 2000,
            max_batch_bytes: 4 << 20,
            max_queued_writes: 100_000,
            max_queued_bytes: 64 << 20,
            write_timeout_ms: 5000,
            read_timeout_ms: 5000,
            reconnect_max_ms: 2000,
            health_interval_ms: 1000,
        }
    }
}

impl PostgresSection {
    pub fn connect_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.connect_timeout_ms)
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Memory,
            max_conversations: 100_000,
            max_messages_per_conversation: 10_000,
            max_messages: 1_000_000,
            max_offline_per_user: 100_000,
            max_offline_messages: 1_000_000,
            max_offline_users: 100_000,
            max_dedup_entries: 100_000,
            max_history_page: 100,
            max_body_bytes: 16_384,
            max_edits_per_message: 100,
            max_reactions_per_message: 1_000,
            max_readers_per_conversation: 10_000,
            postgres: PostgresSection::default(),
        }
    }
}

/// The validated `[store]` the store uses: the same fields, every bound at least 1 (see
/// [`resolve`]).
pub type StoreConfig = StoreSection;

/// A `[store]` section that cannot be used; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreConfigError {
    #[error("store.{field} must be at least 1")]
    Zero { field: &'static str },
    #[error("store.postgres.url must not be empty")]
    NoUrl,
}

/// Validates `[store]`: every bound must be at least 1 (a zero bound would make the store
/// unusable, and "0 = unlimited" would break the promise that everything is bounded).
pub fn resolve(s: &StoreSection) -> Result<StoreConfig, StoreConfigError> {
    let bounds = [
        ("max_conversations", s.max_conversations),
        ("max_messages_per_conversation", s.max_messages_per_conversation),
        ("max_messages", s.max_messages),
        ("max_offline_per_user", s.max_offline_per_user),
        ("max_offline_messages", s.max_offline_messages),
        ("max_offline_users", s.max_offline_users),
        ("max_dedup_entries", s.max_dedup_entries),
        ("max_history_page", s.max_history_page),
        ("max_body_bytes", s.max_body_bytes),
        ("max_edits_per_message", s.max_edits_per_message),
        ("max_reactions_per_message", s.max_reactions_per_message),
        ("max_readers_per_conversation", s.max_readers_per_conversation),
    ];
    if let Some(&(field, _)) = bounds.iter().find(|(_, v)| *v == 0) {
        return Err(StoreConfigError::Zero { field });
    }
    let pg = &s.postgres;
    let pg_bounds = [
        ("postgres.connect_timeout_ms", pg.connect_timeout_ms as usize),
        ("postgres.writers", pg.writers),
        ("postgres.read_pool_size", pg.read_pool_size),
        ("postgres.baseline_pool_size", pg.baseline_pool_size),
        ("postgres.max_batch_rows", pg.max_batch_rows),
        ("postgres.max_batch_bytes", pg.max_batch_bytes),
        ("postgres.max_queued_writes", pg.max_queued_writes),
        ("postgres.max_queued_bytes", pg.max_queued_bytes),
        ("postgres.write_timeout_ms", pg.write_timeout_ms as usize),
        ("postgres.read_timeout_ms", pg.read_timeout_ms as usize),
        ("postgres.reconnect_max_ms", pg.reconnect_max_ms as usize),
        ("postgres.health_interval_ms", pg.health_interval_ms as usize),
    ];
    if let Some(&(field, _)) = pg_bounds.iter().find(|(_, v)| *v == 0) {
        return Err(StoreConfigError::Zero { field });
    }
    if s.postgres.url.trim().is_empty() {
        return Err(StoreConfigError::NoUrl);
    }
    Ok(s.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_the_defaults() {
        let s: StoreSection = toml::from_str("").unwrap();
        let c = resolve(&s).unwrap();
        assert_eq!(c, StoreConfig::default());
        assert_eq!(c.backend, StoreBackend::Memory);
        assert_eq!(c.max_conversations, 100_000);
        assert_eq!(c.max_messages_per_conversation, 10_000);
        assert_eq!(c.max_offline_per_user, 100_000);
        assert_eq!(c.max_dedup_entries, 100_000);
        assert_eq!(c.max_history_page, 100);
        assert_eq!(c.max_body_bytes, 16_384);
    }

    #[test]
    fn reads_the_file_shape() {
        let s: StoreSection = toml::from_str("backend = \"memory\"\nmax_history_page = 7\n").unwrap();
        assert_eq!(resolve(&s).unwrap().max_history_page, 7);
    }

    #[test]
    fn refuses_unknown_keys_and_backends() {
        assert!(toml::from_str::<StoreSection>("max_history = 7\n").is_err());
        assert!(toml::from_str::<StoreSection>("backend = \"mysql\"\n").is_err());
        let pg: StoreSection = toml::from_str("backend = \"postgres\"\n").unwrap();
        assert_eq!(pg.backend, StoreBackend::Postgres);
    }

    #[test]
    fn the_postgres_section_refuses_an_empty_url_and_a_zero_timeout() {
        let s: StoreSection = toml::from_str("[postgres]\nurl = \"postgres://db/imks\"\n").unwrap();
        assert_eq!(resolve(&s).unwrap().postgres.url, "postgres://db/imks");
        let s: StoreSection = toml::from_str("[postgres]\nurl = \" \"\n").unwrap();
        assert_eq!(resolve(&s), Err(StoreConfigError::NoUrl));
        let s: StoreSection = toml::from_str("[postgres]\nconnect_timeout_ms = 0\n").unwrap();
        assert_eq!(resolve(&s), Err(StoreConfigError::Zero { field: "postgres.connect_timeout_ms" }));
        assert!(toml::from_str::<StoreSection>("[postgres]\npool = 3\n").is_err(), "unknown keys refused");
        for field in ["read_pool_size", "max_batch_rows", "max_queued_writes", "write_timeout_ms", "health_interval_ms"]
        {
            let s: StoreSection = toml::from_str(&format!("[postgres]\n{field} = 0\n")).unwrap();
            assert_eq!(resolve(&s), Err(StoreConfigError::Zero { field: format!("postgres.{field}").leak() }));
        }
        let s: StoreSection = toml::from_str("[postgres]\ncommit = \"per_message\"\n").unwrap();
        assert_eq!(s.postgres.commit, CommitMode::PerMessage);
    }

    #[test]
    fn every_bound_refuses_zero_by_name() {
        let fields = [
            "max_conversations",
            "max_messages_per_conversation",
            "max_messages",
            "max_offline_per_user",
            "max_offline_messages",
            "max_offline_users",
            "max_dedup_entries",
            "max_history_page",
            "max_body_bytes",
            "max_edits_per_message",
            "max_reactions_per_message",
            "max_readers_per_conversation",
        ];
        for field in fields {
            let s: StoreSection = toml::from_str(&format!("{field} = 0\n")).unwrap();
            assert_eq!(resolve(&s), Err(StoreConfigError::Zero { field }), "{field}");
            let s: StoreSection = toml::from_str(&format!("{field} = 1\n")).unwrap();
            assert!(resolve(&s).is_ok(), "{field} = 1");
        }
    }

    #[test]
    fn zero_is_refused_naming_the_field() {
        let s = StoreSection { max_conversations: 0, ..StoreSection::default() };
        assert_eq!(resolve(&s).unwrap_err().to_string(), "store.max_conversations must be at least 1");
        let s = StoreSection { max_readers_per_conversation: 0, ..StoreSection::default() };
        assert_eq!(resolve(&s).unwrap_err(), StoreConfigError::Zero { field: "max_readers_per_conversation" });
    }
}
