//! Channel membership: who may send to and join each channel (room), per tenant.
//!
//! Unlike the message store this is not partitioned: every shard asks it on every room send and
//! join, and an admin changes it rarely. So it is one [`Membership`] shared by all shards as an
//! `Arc`, holding an immutable snapshot behind an [`ArcSwap`]:
//!
//! - Readers `load()` the current snapshot, which takes no lock and writes no shared cache line
//!   another reader waits on, so a send on one core never waits for a send on another nor for an
//!   admin change. A reader sees one whole snapshot: a channel's member list is replaced
//!   atomically, never half-updated.
//! - Writers clone the snapshot, change the clone and store it. A `Mutex` serialises writers
//!   only, so two admin changes cannot both start from the same snapshot and lose one of them;
//!   readers never touch it. Cloning is cheap: member sets are `Arc`-shared between snapshots
//!   and only the changed ones are copied.
//!
//! In [`MembershipMode::Open`] (the default) everyone is a member of every channel and no
//! snapshot is consulted.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

pub use crate::names::{validate_name, NameError, MAX_ID_BYTES};

/// Who may use a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipMode {
    /// Everyone is a member of every channel; channel lists are ignored.
    #[default]
    Open,
    /// Only the listed members, as configured and then changed through the admin API.
    Config,
}

/// `[membership]` as written in `imks.toml`.
///
/// ```toml
/// [membership]
/// mode = "config"
/// channels = [{ tenant = "default", id = "general", members = ["alice", "bob"] }]
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipSection {
    /// `"open"` or `"config"`. Default `"open"`.
    pub mode: MembershipMode,
    /// The channels and their members at start-up; ignored in open mode. Default none.
    pub channels: Vec<ChannelSection>,
    /// Most channels across all tenants, at start-up and through the admin API. Default 100000.
    pub max_channels: usize,
    /// Most members of one channel. Default 100000.
    pub max_members_per_channel: usize,
}

impl Default for MembershipSection {
    fn default() -> Self {
        Self {
            mode: MembershipMode::Open,
            channels: Vec::new(),
            max_channels: 100_000,
            max_members_per_channel: 100_000,
        }
    }
}

/// One `[[membership.channels]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelSection {
    /// The tenant the channel belongs to. Default `"default"`.
    pub tenant: String,
    /// The channel id, 1 to 128 bytes, no control characters. Required.
    pub id: String,
    /// User ids, each 1 to 128 bytes, no control characters; repeats are ignored. Default none.
    pub members: Vec<String>,
}

impl Default for ChannelSection {
    fn default() -> Self {
        Self { tenant: "default".into(), id: String::new(), members: Vec::new() }
    }
}

/// The validated `[membership]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MembershipConfig {
    pub mode: MembershipMode,
    pub channels: Vec<ChannelConfig>,
    pub max_channels: usize,
    pub max_members_per_channel: usize,
}

/// A validated channel entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    pub tenant: Arc<str>,
    pub id: Arc<str>,
    pub members: Vec<Arc<str>>,
}

/// A `[membership]` section that cannot be used; each message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipConfigError {
    #[error("{field}: {source}")]
    Name { field: String, source: NameError },
    #[error("{field}: channel {id:?} of tenant {tenant:?} is listed twice")]
    Duplicate { field: String, tenant: String, id: String },
    #[error("{field}: more than {max}")]
    TooMany { field: String, max: usize },
    #[error("membership.{field} must be at least 1")]
    Zero { field: &'static str },
}

/// Validates `[membership]`: every id well-formed, no channel twice, the bounds at least 1 and
/// respected by the listed channels.
pub fn resolve(s: &MembershipSection) -> Result<MembershipConfig, MembershipConfigError> {
    if s.max_channels == 0 {
        return Err(MembershipConfigError::Zero { field: "max_channels" });
    }
    if s.max_members_per_channel == 0 {
        return Err(MembershipConfigError::Zero { field: "max_members_per_channel" });
    }
    if s.channels.len() > s.max_channels {
        return Err(MembershipConfigError::TooMany { field: "membership.channels".into(), max: s.max_channels });
    }
    let name = |field: String, kind: &'static str, v: &str| {
        validate_name(kind, v, MAX_ID_BYTES).map_err(|source| MembershipConfigError::Name { field, source })
    };
    let mut seen = std::collections::HashSet::new();
    let mut channels = Vec::with_capacity(s.channels.len());
    for (i, c) in s.channels.iter().enumerate() {
        let at = format!("membership.channels[{i}]");
        name(format!("{at}.tenant"), "tenant id", &c.tenant)?;
        name(format!("{at}.id"), "channel id", &c.id)?;
        if !seen.insert((c.tenant.as_str(), c.id.as_str())) {
            return Err(MembershipConfigError::Duplicate { field: at, tenant: c.tenant.clone(), id: c.id.clone() });
        }
        let mut members = BTreeSet::new();
        for (j, m) in c.members.iter().enumerate() {
            name(format!("{at}.members[{j}]"), "user id", m)?;
            members.insert(m.as_str());
        }
        if members.len() > s.max_members_per_channel {
            return Err(MembershipConfigError::TooMany {
                field: format!("{at}.members"),
                max: s.max_members_per_channel,
            });
        }
        channels.push(ChannelConfig {
            tenant: c.tenant.as_str().into(),
            id: c.id.as_str().into(),
            members: members.into_iter().map(Arc::from).collect(),
        });
    }
    Ok(MembershipConfig {
        mode: s.mode,
        channels,
        max_channels: s.max_channels,
        max_members_per_channel: s.max_members_per_channel,
    })
}

/// Why an admin change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Open mode has no member lists to change.
    #[error("membership is open: every user is a member of every channel")]
    Open,
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("a channel has at most {max} members")]
    ChannelFull { max: usize },
    #[error("at most {max} channels")]
    TooManyChannels { max: usize },
}

impl MembershipError {
    /// The status the admin API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            MembershipError::Name(_) => 400,
            MembershipError::Open | MembershipError::ChannelFull { .. } | MembershipError::TooManyChannels { .. } => {
                409
            }
        }
    }
}

type Set = Arc<BTreeSet<Arc<str>>>;

/// One immutable state of all member lists. Tenant first, so lookups by `&str` need no key.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// tenant -> channel -> members.
    channels: HashMap<Arc<str>, HashMap<Arc<str>, Set>>,
    /// tenant -> user -> channels: the reverse index, so [`Membership::channels_of`] does not
    /// scan every channel.
    by_user: HashMap<Arc<str>, HashMap<Arc<str>, Set>>,
    channel_count: usize,
}

impl Snapshot {
    fn members(&self, tenant: &str, channel: &str) -> Option<&Set> {
        self.channels.get(tenant)?.get(channel)
    }

    fn link(&mut self, tenant: &Arc<str>, channel: &Arc<str>, user: &Arc<str>) {
        let users = self.by_user.entry(tenant.clone()).or_default();
        Arc::make_mut(users.entry(user.clone()).or_default()).insert(channel.clone());
    }

    fn unlink(&mut self, tenant: &str, channel: &str, user: &str) {
        let Some(users) = self.by_user.get_mut(tenant) else { return };
        if let Some(chans) = users.get_mut(user) {
            Arc::make_mut(chans).remove(channel);
            if chans.is_empty() {
                users.remove(user);
            }
        }
        if users.is_empty() {
            self.by_user.remove(tenant);
        }
    }

    /// Removes a channel and its reverse entries; returns whether it existed.
    fn remove_channel(&mut self, tenant: &str, channel: &str) -> bool {
        let Some(chans) = self.channels.get_mut(tenant) else { return false };
        let Some(members) = chans.remove(channel) else { return false };
        if chans.is_empty() {
            self.channels.remove(tenant);
        }
        self.channel_count -= 1;
        for user in members.iter() {
            self.unlink(tenant, channel, user);
        }
        true
    }

    /// Creates or replaces a channel's list, which the caller has validated and bounded.
    fn set_channel(&mut self, tenant: &Arc<str>, channel: &Arc<str>, members: BTreeSet<Arc<str>>) {
        self.remove_channel(tenant, channel);
        for user in &members {
            self.link(tenant, channel, user);
        }
        self.channels.entry(tenant.clone()).or_default().insert(channel.clone(), Arc::new(members));
        self.channel_count += 1;
    }
}

/// Where membership comes from. Checked on every join and send from every shard, so an
/// implementation must answer without blocking: [`Membership`] (config plus the in-memory
/// admin API) is the default; an embedding application can supply its own through
/// `AppFactories::membership` (the account service over gRPC will be one).
pub trait MembershipSource: Send + Sync {
    /// Whether `user` may join and send to `channel` of `tenant`.
    fn is_member(&self, tenant: &str, channel: &str, user: &str) -> bool;
}

impl MembershipSource for Membership {
    fn is_member(&self, tenant: &str, channel: &str, user: &str) -> bool {
        Membership::is_member(self, tenant, channel, user)
    }
}

/// The membership source a shard's protocols ask: a per-shard service over the node's one
/// source (the application's, or [`Membership`]).
pub struct Members(pub std::sync::Arc<dyn MembershipSource>);

impl Members {
    pub fn is_member(&self, tenant: &str, channel: &str, user: &str) -> bool {
        self.0.is_member(tenant, channel, user)
    }
}

/// Channel membership, shared by all shards (`Send + Sync`, used as `Arc<Membership>`).
pub struct Membership {
    mode: MembershipMode,
    max_channels: usize,
    max_members_per_channel: usize,
    current: ArcSwap<Snapshot>,
    /// Serialises writers only; see the module doc. Guards no data, so a poisoned lock is safe
    /// to take again.
    write: Mutex<()>,
}

impl Membership {
    pub fn new(cfg: &MembershipConfig) -> Self {
        let mut snapshot = Snapshot::default();
        for c in &cfg.channels {
            snapshot.set_channel(&c.tenant, &c.id, c.members.iter().cloned().collect());
        }
        Self {
            mode: cfg.mode,
            max_channels: cfg.max_channels,
            max_members_per_channel: cfg.max_members_per_channel,
            current: ArcSwap::from_pointee(snapshot),
            write: Mutex::new(()),
        }
    }

    pub fn mode(&self) -> MembershipMode {
        self.mode
    }

    /// Whether `user` may send to and join `channel`. Always true in open mode. Lock-free.
    pub fn is_member(&self, tenant: &str, channel: &str, user: &str) -> bool {
        match self.mode {
            MembershipMode::Open => true,
            MembershipMode::Config => self.current.load().members(tenant, channel).is_some_and(|m| m.contains(user)),
        }
    }

    /// The channel's members, sorted; `None` in open mode (everyone), empty for an unknown
    /// channel.
    pub fn members(&self, tenant: &str, channel: &str) -> Option<Vec<Arc<str>>> {
        match self.mode {
            MembershipMode::Open => None,
            MembershipMode::Config => Some(
                self.current.load().members(tenant, channel).map_or_else(Vec::new, |m| m.iter().cloned().collect()),
            ),
        }
    }

    /// The channels `user` is listed in, sorted. Empty in open mode, where channels are not
    /// enumerable (every user may join any).
    pub fn channels_of(&self, tenant: &str, user: &str) -> Vec<Arc<str>> {
        match self.mode {
            MembershipMode::Open => Vec::new(),
            MembershipMode::Config => self
                .current
                .load()
                .by_user
                .get(tenant)
                .and_then(|users| users.get(user))
                .map_or_else(Vec::new, |c| c.iter().cloned().collect()),
        }
    }

    /// Adds `user` to `channel`, creating the channel if needed. Returns whether the user was
    /// newly added.
    pub fn add_member(&self, tenant: &str, channel: &str, user: &str) -> Result<bool, MembershipError> {
        self.writable()?;
        validate_ids(tenant, channel)?;
        validate_name("user id", user, MAX_ID_BYTES)?;
        self.update(|s| {
            let existing = s.members(tenant, channel);
            if existing.is_some_and(|m| m.contains(user)) {
                return Ok(false);
            }
            if existing.is_none() && s.channel_count >= self.max_channels {
                return Err(MembershipError::TooManyChannels { max: self.max_channels });
            }
            if existing.is_some_and(|m| m.len() >= self.max_members_per_channel) {
                return Err(MembershipError::ChannelFull { max: self.max_members_per_channel });
            }
            let (t, c, u): (Arc<str>, Arc<str>, Arc<str>) = (tenant.into(), channel.into(), user.into());
            match s.channels.get_mut(tenant).and_then(|chans| chans.get_mut(channel)) {
                Some(m) => {
                    Arc::make_mut(m).insert(u.clone());
                }
                None => {
                    s.channels.entry(t.clone()).or_default().insert(c.clone(), Arc::new(BTreeSet::from([u.clone()])));
                    s.channel_count += 1;
                }
            }
            s.link(&t, &c, &u);
            Ok(true)
        })
    }

    /// Removes `user` from `channel`; returns whether they were a member. The channel stays,
    /// possibly empty. Always false in open mode.
    pub fn remove_member(&self, tenant: &str, channel: &str, user: &str) -> bool {
        if self.mode == MembershipMode::Open {
            return false;
        }
        let _w = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.current.load().members(tenant, channel).is_some_and(|m| m.contains(user)) {
            return false;
        }
        let mut next = Snapshot::clone(&self.current.load());
        if let Some(m) = next.channels.get_mut(tenant).and_then(|chans| chans.get_mut(channel)) {
            Arc::make_mut(m).remove(user);
        }
        next.unlink(tenant, channel, user);
        self.current.store(Arc::new(next));
        true
    }

    /// Creates `channel` or replaces its whole member list at once: readers see the old list or
    /// the new one, never a mix. Repeated ids are ignored.
    pub fn set_channel(&self, tenant: &str, channel: &str, members: Vec<String>) -> Result<(), MembershipError> {
        self.writable()?;
        validate_ids(tenant, channel)?;
        let mut set = BTreeSet::new();
        for m in &members {
            validate_name("user id", m, MAX_ID_BYTES)?;
            set.insert(Arc::<str>::from(m.as_str()));
        }
        if set.len() > self.max_members_per_channel {
            return Err(MembershipError::ChannelFull { max: self.max_members_per_channel });
        }
        self.update(|s| {
            if s.members(tenant, channel).is_none() && s.channel_count >= self.max_channels {
                return Err(MembershipError::TooManyChannels { max: self.max_channels });
            }
            s.set_channel(&tenant.into(), &channel.into(), set);
            Ok(())
        })
    }

    /// Removes `channel` and all its members; returns whether it existed. Always false in open
    /// mode.
    pub fn remove_channel(&self, tenant: &str, channel: &str) -> bool {
        if self.mode == MembershipMode::Open {
            return false;
        }
        let _w = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Snapshot::clone(&self.current.load());
        let removed = next.remove_channel(tenant, channel);
        if removed {
            self.current.store(Arc::new(next));
        }
        removed
    }

    fn writable(&self) -> Result<(), MembershipError> {
        match self.mode {
            MembershipMode::Open => Err(MembershipError::Open),
            MembershipMode::Config => Ok(()),
        }
    }

    /// Clone, change, store, under the writers' lock. Nothing is stored when `f` fails.
    fn update<T>(&self, f: impl FnOnce(&mut Snapshot) -> Result<T, MembershipError>) -> Result<T, MembershipError> {
        let _w = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Snapshot::clone(&self.current.load());
        let out = f(&mut next)?;
        self.current.store(Arc::new(next));
        Ok(out)
    }
}

fn validate_ids(tenant: &str, channel: &str) -> Result<(), NameError> {
    validate_name("tenant id", tenant, MAX_ID_BYTES)?;
    validate_name("channel id", channel, MAX_ID_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_mode(toml_text: &str) -> Membership {
        let s: MembershipSection = toml::from_str(toml_text).unwrap();
        Membership::new(&resolve(&s).unwrap())
    }

    fn names(v: &[Arc<str>]) -> Vec<&str> {
        v.iter().map(|s| &**s).collect()
    }

    const GENERAL: &str = r#"
        mode = "config"
        channels = [
            { tenant = "default", id = "general", members = ["bob", "alice", "bob"] },
            { id = "random", members = ["alice"] },
            { tenant = "acme", id = "general", members = ["carol"] },
        ]
    "#;

    #[test]
    fn open_mode_admits_everyone_and_refuses_changes() {
        let m = Membership::new(&resolve(&MembershipSection::default()).unwrap());
        assert_eq!(m.mode(), MembershipMode::Open);
        assert!(m.is_member("default", "anything", "anyone"));
        assert_eq!(m.members("default", "general"), None);
        assert!(m.channels_of("default", "alice").is_empty());
        assert_eq!(m.add_member("default", "general", "alice"), Err(MembershipError::Open));
        assert_eq!(m.set_channel("default", "general", vec![]), Err(MembershipError::Open));
        assert!(!m.remove_member("default", "general", "alice"));
        assert!(!m.remove_channel("default", "general"));
        assert_eq!(MembershipError::Open.http_status(), 409);
    }

    #[test]
    fn config_mode_admits_only_listed_members() {
        let m = config_mode(GENERAL);
        assert!(m.is_member("default", "general", "alice"));
        assert!(!m.is_member("default", "general", "carol"));
        assert!(m.is_member("acme", "general", "carol"));
        assert!(!m.is_member("acme", "general", "alice"), "tenants are separate");
        assert!(!m.is_member("default", "unknown", "alice"));
        assert_eq!(names(&m.members("default", "general").unwrap()), ["alice", "bob"]);
        assert_eq!(m.members("default", "unknown"), Some(vec![]));
        assert_eq!(names(&m.channels_of("default", "alice")), ["general", "random"]);
        assert_eq!(names(&m.channels_of("acme", "carol")), ["general"]);
        assert!(m.channels_of("default", "carol").is_empty());
    }

    #[test]
    fn add_and_remove_members_keep_the_reverse_index() {
        let m = config_mode(GENERAL);
        assert_eq!(m.add_member("default", "general", "carol"), Ok(true));
        assert_eq!(m.add_member("default", "general", "carol"), Ok(false));
        assert_eq!(m.add_member("default", "new", "carol"), Ok(true));
        assert!(m.is_member("default", "new", "carol"));
        assert_eq!(names(&m.channels_of("default", "carol")), ["general", "new"]);
        assert!(m.remove_member("default", "general", "carol"));
        assert!(!m.remove_member("default", "general", "carol"));
        assert!(!m.is_member("default", "general", "carol"));
        assert_eq!(names(&m.channels_of("default", "carol")), ["new"]);
        assert_eq!(m.members("default", "new").map(|v| v.len()), Some(1));
    }

    #[test]
    fn set_and_remove_channel() {
        let m = config_mode(GENERAL);
        m.set_channel("default", "general", vec!["dave".into(), "alice".into()]).unwrap();
        assert_eq!(names(&m.members("default", "general").unwrap()), ["alice", "dave"]);
        assert!(!m.is_member("default", "general", "bob"));
        assert!(m.channels_of("default", "bob").is_empty());
        assert!(m.remove_channel("default", "general"));
        assert!(!m.remove_channel("default", "general"));
        assert!(!m.is_member("default", "general", "alice"));
        assert_eq!(names(&m.channels_of("default", "alice")), ["random"]);
        assert!(m.channels_of("default", "dave").is_empty());
    }

    #[test]
    fn writes_validate_names_and_bounds() {
        let m = config_mode("mode = \"config\"\nmax_channels = 2\nmax_members_per_channel = 2\n");
        let e = m.add_member("default", "a\nb", "alice").unwrap_err();
        assert_eq!(e.to_string(), "channel id must not contain control characters");
        assert_eq!(e.http_status(), 400);
        assert!(matches!(m.add_member("", "c", "alice"), Err(MembershipError::Name(NameError::Empty { .. }))));
        assert!(m.set_channel("default", "c", vec!["x".repeat(129)]).is_err());
        m.set_channel("default", "c1", vec!["a".into(), "b".into()]).unwrap();
        assert_eq!(m.add_member("default", "c1", "c"), Err(MembershipError::ChannelFull { max: 2 }));
        assert_eq!(
            m.set_channel("default", "c1", vec!["a".into(), "b".into(), "c".into()]),
            Err(MembershipError::ChannelFull { max: 2 })
        );
        m.add_member("default", "c2", "a").unwrap();
        assert_eq!(m.add_member("default", "c3", "a"), Err(MembershipError::TooManyChannels { max: 2 }));
        assert_eq!(m.set_channel("other", "c3", vec![]), Err(MembershipError::TooManyChannels { max: 2 }));
        // Replacing an existing channel is not a new one.
        m.set_channel("default", "c2", vec![]).unwrap();
        assert!(m.remove_channel("default", "c2"));
        assert_eq!(m.add_member("default", "c3", "a"), Ok(true));
        assert!(!m.is_member("default", "c1", "c"), "a refused change stores nothing");
    }

    #[test]
    fn resolve_names_the_bad_field() {
        let err = |t: &str| resolve(&toml::from_str::<MembershipSection>(t).unwrap()).unwrap_err().to_string();
        assert_eq!(
            err("channels = [{ id = \"ok\", members = [\"a\", \"\"] }]"),
            "membership.channels[0].members[1]: user id must not be empty"
        );
        assert_eq!(
            err("channels = [{ members = [\"a\"] }]"),
            "membership.channels[0].id: channel id must not be empty"
        );
        assert_eq!(
            err("channels = [{ tenant = \"t\\u0007\", id = \"x\" }]"),
            "membership.channels[0].tenant: tenant id must not contain control characters"
        );
        assert_eq!(
            err("channels = [{ id = \"x\" }, { tenant = \"default\", id = \"x\" }]"),
            "membership.channels[1]: channel \"x\" of tenant \"default\" is listed twice"
        );
        assert_eq!(err("max_channels = 0"), "membership.max_channels must be at least 1");
        assert_eq!(
            err("max_members_per_channel = 1\nchannels = [{ id = \"x\", members = [\"a\", \"b\"] }]"),
            "membership.channels[0].members: more than 1"
        );
        assert!(toml::from_str::<MembershipSection>("mode = \"closed\"").is_err());
        assert!(toml::from_str::<MembershipSection>("modes = \"open\"").is_err());
        assert!(toml::from_str::<MembershipSection>("channels = [{ id = \"x\", member = [] }]").is_err());
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Membership>();
    }

    #[test]
    fn readers_never_see_a_torn_member_list() {
        let m = config_mode("mode = \"config\"");
        let list = |prefix: &str| (0..50).map(|i| format!("{prefix}{i:02}")).collect::<Vec<String>>();
        let (a, b) = (list("a"), list("b"));
        m.set_channel("default", "c", a.clone()).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let mut reads = 0u64;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let got: Vec<String> =
                                m.members("default", "c").unwrap().iter().map(|s| s.to_string()).collect();
                            assert!(got == a || got == b, "torn list of {} members", got.len());
                            let chans = m.channels_of("default", "a00").len() + m.channels_of("default", "b00").len();
                            assert!(chans <= 2);
                            reads += 1;
                        }
                        reads
                    })
                })
                .collect();
            for i in 0..500 {
                m.set_channel("default", "c", if i % 2 == 0 { b.clone() } else { a.clone() }).unwrap();
                if i % 50 == 0 {
                    m.add_member("default", "other", &format!("u{i}")).unwrap();
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for r in readers {
                assert!(r.join().unwrap() > 0);
            }
        });
        assert_eq!(m.members("default", "c").unwrap().len(), 50);
        assert_eq!(m.members("default", "other").unwrap().len(), 10);
    }
}
