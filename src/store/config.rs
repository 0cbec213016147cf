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
}

/// `[store]` as written in `imks.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `"memory"`, the only backend so far. Default `"memory"`.
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
    /// `[store.postgres]`: the database of the Postgres store. `imks migrate` uses it today;
    /// the store of record on Postgres comes with `backend = "postgres"`.
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
}

impl Default for PostgresSection {
    fn default() -> Self {
        Self { url: "postgres://postgres@127.0.0.1:5432/imks".into(), connect_timeout_ms: 5000 }
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
    if s.postgres.connect_timeout_ms == 0 {
        return Err(StoreConfigError::Zero { field: "postgres.connect_timeout_ms" });
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
        assert!(toml::from_str::<StoreSection>("backend = \"postgres\"\n").is_err());
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
