//! The identity directory and presence: which sessions each user has (kept on the user's
//! home shard), who watches whose presence, logins that kick older sessions, and the queries
//! and sends addressed to a user rather than a session.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::delivery::send_paced;
use super::encode::{encode_message, text};
use super::envelope::{encode, encode_presence};
use super::msg::post_home;
use super::{home_shard, now_ms, post, ChatMsg, ChatTask, DuplicateLogin, Hub, UserKey};
use crate::metrics::{self, CloseReason};
use crate::shard::conn::ConnId;
use crate::shard::Shard;

/// Close code of a session kicked by a newer login of the same user.
pub const CLOSE_KICKED: u16 = 4001;

/// A user whose home is this shard.
#[derive(Default)]
pub(super) struct HomeEntry {
    /// Open sessions, oldest first.
    pub(super) sessions: Vec<ConnId>,
    watchers: HashSet<ConnId>,
    /// Logins whose offline queue is being read. While there are any, messages routed to the
    /// user wait in `held`, so the queue reaches the new session first.
    pub(super) loading: usize,
    /// Messages routed to the user while `loading`, with the session that sent each.
    pub(super) held: std::collections::VecDeque<(Arc<crate::store::Message>, Option<ConnId>)>,
    /// In a cluster, while sessions here watch the user: the other nodes where the user has
    /// sessions.
    remote: HashSet<Arc<str>>,
    /// When the user last logged in on this node (ms since the epoch): a newer login on another
    /// node kicks the sessions here under `kick_oldest`.
    last_login_ms: i64,
}

impl HomeEntry {
    fn unused(&self) -> bool {
        self.sessions.is_empty() && self.watchers.is_empty() && self.loading == 0
    }

    /// Online anywhere in the cluster, as far as this node knows.
    fn online(&self) -> bool {
        !self.sessions.is_empty() || !self.remote.is_empty()
    }
}

/// For the wait that is ending (a login reading the offline queue, or a direct message asking
/// other nodes): the next message held for the user, when it is the last wait. The wait then
/// goes on while it delivers that message ([`super::delivery::drain_held`]); with nothing held,
/// or another wait still under way (which takes them when it ends), the wait ends here.
pub(super) fn next_held(hub: &Hub, user: &UserKey) -> Option<(Arc<crate::store::Message>, Option<ConnId>)> {
    let mut homes = hub.homes.borrow_mut();
    let next = match homes.get_mut(user) {
        Some(e) if e.loading == 1 && !e.held.is_empty() => e.held.pop_front(),
        Some(e) => {
            e.loading = e.loading.saturating_sub(1);
            None
        }
        None => None,
    };
    if next.is_none() && homes.get(user).is_some_and(HomeEntry::unused) {
        homes.remove(user);
    }
    next
}

/// Sends a frame to every session of a user, on any shard (several devices), at the pace each
/// reads and in order with the chat messages and acks it gets: never dropped by the send
/// queue's policy.
pub fn send_to_identity(shard: &Shard, tenant: &str, user: &str, frame: Bytes) {
    let user = UserKey { tenant: tenant.into(), user: user.into() };
    post_home(shard, &user.clone(), ChatMsg::ToIdentity { user, frame });
}

/// The sessions a user has on this node, asked of the user's home shard.
pub async fn identity_sessions(shard: &Shard, tenant: &str, user: &str) -> Vec<ConnId> {
    let user = UserKey { tenant: tenant.into(), user: user.into() };
    let home = home_shard(&user.tenant, &user.user, shard.shard_count());
    // Asked of the home shard's worker, so the answer is in order with the logins before it.
    let ask = move |home: Rc<Shard>| async move {
        let Some(hub) = home.service::<Hub>() else { return Vec::new() };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let query: ChatTask = Box::new(move |_, hub: Rc<Hub>| {
            Box::pin(async move {
                let _ = tx.send(hub.sessions_of(&user));
            })
        });
        hub.accept(ChatMsg::Task(query));
        rx.await.unwrap_or_default()
    };
    let answer = monoio::select! {
        r = shard.call(home, ask) => r,
        _ = monoio::time::sleep(Duration::from_secs(5)) => None,
    };
    answer.unwrap_or_default()
}

/// Whether a user has a session anywhere on this node.
pub async fn is_online(shard: &Shard, tenant: &str, user: &str) -> bool {
    !identity_sessions(shard, tenant, user).await.is_empty()
}

/// Distinct users online on the node.
pub fn online_count(shard: &Shard) -> u64 {
    shard.node.stats.iter().map(|s| metrics::get(&s.identities_online)).sum()
}

impl Hub {
    /// The sessions a user of this home shard has.
    pub(super) fn sessions_of(&self, user: &UserKey) -> Vec<ConnId> {
        self.homes.borrow().get(user).map(|e| e.sessions.clone()).unwrap_or_default()
    }
}

/// A session of `user` opened: `online` to the watchers when it is the first, kicks past
/// the sessions allowed, `connected`, then the offline queue.
pub(super) async fn register(shard: &Rc<Shard>, hub: &Hub, user: UserKey, session: ConnId) {
    super::cluster::user_session(shard, &user, true);
    let at_ms = now_ms();
    let (first, kick, watchers) = {
        let mut homes = hub.homes.borrow_mut();
        let e = homes.entry(user.clone()).or_default();
        // Online for the watchers only if it was offline everywhere.
        let first = !e.online();
        let first_here = e.sessions.is_empty();
        e.last_login_ms = e.last_login_ms.max(at_ms);
        e.sessions.push(session);
        let keep = match hub.config.duplicate_login {
            DuplicateLogin::KickOldest => 1,
            DuplicateLogin::Allow => hub.config.max_sessions_per_user.max(1),
        };
        let excess = e.sessions.len().saturating_sub(keep);
        let kick: Vec<ConnId> = e.sessions.drain(..excess).collect();
        let watchers: Vec<ConnId> = if first { e.watchers.iter().copied().collect() } else { Vec::new() };
        if first_here {
            metrics::add(&shard.stats.identities_online, 1);
            super::cluster::publish_presence(shard, &user, true);
        }
        (first, kick, watchers)
    };
    if hub.config.duplicate_login == DuplicateLogin::KickOldest {
        super::cluster::publish_login(shard, &user, at_ms);
    }
    if first {
        let frame = text(encode_presence(true, &user.user, now_ms()));
        for w in watchers {
            shard.send_to(w, frame.clone());
        }
    }
    for k in kick {
        post(shard, usize::from(k.shard), ChatMsg::Kick { session: k });
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Connected<'a> {
        user_id: &'a str,
        tenant: &'a str,
        session_id: String,
        online_count: u64,
    }
    let hello = Connected {
        user_id: &user.user,
        tenant: &user.tenant,
        session_id: session.to_string(),
        online_count: online_count(shard),
    };
    shard.send_to(session, text(encode("connected", None, &hello)));
    // Offline messages, oldest first, ahead of anything routed to the user after this point:
    // that waits on the user's entry until the queue is read. The worker goes on meanwhile, so
    // a slow or hung database stalls this login, not the shard's chat work.
    if let Some(e) = hub.homes.borrow_mut().get_mut(&user) {
        e.loading += 1;
    }
    let queued = match hub.store.take_offline(&user.tenant, &user.user).await {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the offline queue");
            Vec::new()
        }
    };
    let targets: Arc<[ConnId]> = Arc::from([session]);
    for m in queued {
        let frame = encode_message(&m);
        let msg = ChatMsg::Deliver {
            session,
            frame,
            message: Arc::new(m),
            sender: None,
            targets: targets.clone(),
            origin: None,
        };
        post(shard, usize::from(session.shard), msg);
    }
    super::delivery::drain_held(shard, hub, &user).await;
}

/// A session of `user` closed: `offline` to the watchers when it was the last.
pub(super) fn unregister(shard: &Shard, hub: &Hub, user: UserKey, session: ConnId) {
    let mut homes = hub.homes.borrow_mut();
    let Some(e) = homes.get_mut(&user) else { return };
    let before = e.sessions.len();
    e.sessions.retain(|s| *s != session);
    if e.sessions.len() < before {
        super::cluster::user_session(shard, &user, false);
    }
    if before > 0 && e.sessions.is_empty() {
        metrics::sub(&shard.stats.identities_online, 1);
        super::cluster::publish_presence(shard, &user, false);
        if e.remote.is_empty() {
            let frame = text(encode_presence(false, &user.user, now_ms()));
            for w in &e.watchers {
                shard.send_to(*w, frame.clone());
            }
        }
    }
    if e.unused() {
        homes.remove(&user);
    }
}

/// `watcher` wants `online`/`offline` for `user`.
pub(super) async fn watch(shard: &Shard, hub: &Hub, user: UserKey, watcher: ConnId) {
    let (online, first) = {
        let mut homes = hub.homes.borrow_mut();
        let e = homes.entry(user.clone()).or_default();
        let first = e.watchers.is_empty();
        if e.watchers.insert(watcher) {
            super::cluster::user_watched(shard, &user, true);
        }
        (e.online(), first)
    };
    // In a cluster, the first watcher here asks whether another node has the user.
    let online = if online || !first {
        online
    } else if let Some(node) = super::cluster::online_elsewhere(shard, hub, &user).await {
        let mut homes = hub.homes.borrow_mut();
        match homes.get_mut(&user) {
            Some(e) if e.watchers.contains(&watcher) => {
                e.remote.insert(node);
                true
            }
            _ => return,
        }
    } else {
        false
    };
    // The current state, so the watcher need not guess until the next change.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct State<'a> {
        user_id: &'a str,
        online: bool,
    }
    shard.send_to(watcher, text(encode("presence", None, &State { user_id: &user.user, online })));
}

pub(super) fn unwatch(shard: &Shard, hub: &Hub, user: UserKey, watcher: ConnId) {
    let mut homes = hub.homes.borrow_mut();
    if let Some(e) = homes.get_mut(&user) {
        if e.watchers.remove(&watcher) {
            super::cluster::user_watched(shard, &user, false);
        }
        if e.watchers.is_empty() {
            // Only kept while watched: the presence subject is no longer followed.
            e.remote.clear();
        }
        if e.unused() {
            homes.remove(&user);
        }
    }
}

/// Another node's sessions of `user` came (`online`) or all went: the watchers here hear of
/// it when the user's state in the cluster changed.
pub(super) fn remote_presence(shard: &Shard, hub: &Hub, user: UserKey, node: Arc<str>, online: bool) {
    let mut homes = hub.homes.borrow_mut();
    let Some(e) = homes.get_mut(&user).filter(|e| !e.watchers.is_empty()) else { return };
    let before = e.online();
    if online {
        e.remote.insert(node);
    } else {
        e.remote.remove(&node);
    }
    if e.online() != before {
        let frame = text(encode_presence(e.online(), &user.user, now_ms()));
        for w in &e.watchers {
            shard.send_to(*w, frame.clone());
        }
    }
}

/// Node `node` left the cluster or died: the users it had sessions of are no longer online
/// there, and those online nowhere else go offline for the watchers here.
pub(super) fn node_gone(shard: &Shard, hub: &Hub, node: &str) {
    let homes = &mut *hub.homes.borrow_mut();
    for (user, e) in homes.iter_mut() {
        if e.remote.remove(node) && !e.online() {
            let frame = text(encode_presence(false, &user.user, now_ms()));
            for w in &e.watchers {
                shard.send_to(*w, frame.clone());
            }
        }
    }
}

/// The user logged in on another node at `at_ms`: under `kick_oldest`, the sessions here go
/// when that login is the newer one (ties: the greater node id wins, so exactly one side
/// keeps its session).
pub(super) fn remote_login(shard: &Shard, hub: &Hub, user: UserKey, node: &str, at_ms: i64) {
    if hub.config.duplicate_login != DuplicateLogin::KickOldest {
        return;
    }
    let Some(me) = super::cluster::cluster(shard).map(|c| c.node_id().clone()) else { return };
    let kick: Vec<ConnId> = {
        let homes = hub.homes.borrow();
        let Some(e) = homes.get(&user) else { return };
        if (at_ms, node) > (e.last_login_ms, &*me) {
            e.sessions.clone()
        } else {
            Vec::new()
        }
    };
    for k in kick {
        post(shard, usize::from(k.shard), ChatMsg::Kick { session: k });
    }
}

/// A frame for every session of `user`.
pub(super) fn to_identity(shard: &Shard, hub: &Hub, user: UserKey, frame: Bytes) {
    let sessions = hub.homes.borrow().get(&user).map(|e| e.sessions.clone()).unwrap_or_default();
    for s in sessions {
        send_paced(shard, s, frame.clone());
    }
}

/// Closes a session a newer login took the place of.
pub(super) fn kick(shard: &Shard, session: ConnId) {
    if let Some(c) = shard.session(session) {
        #[derive(Serialize)]
        struct Kicked {
            reason: &'static str,
        }
        shard.deliver(&c, text(encode("kicked", None, &Kicked { reason: "duplicate_login" })));
        shard.close_session_keeping_data(&c, CLOSE_KICKED, "kicked: duplicate login", CloseReason::Policy);
    }
}
