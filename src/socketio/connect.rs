//! A socket's way into a namespace and out of it: the CONNECT packet, the connect timeout,
//! authentication, the namespace's middleware, the claim of a recovered socket (on this shard
//! or on the one that kept it), and the state kept for recovery when a socket goes away.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use super::api::AckCallback;
use super::engine::{prepare_bytes, text_packet, SioConn};
use super::packet::{self, Packet, PacketKind};
use super::recovery::{self, Restored, Stored};
use super::{AckError, Socket, SocketId, SocketIo};
use crate::engineio::{self, EioSession};
use crate::shard::Shard;

impl SocketIo {
    /// A connection that joins no namespace in time is closed; when a token is required,
    /// the auth timeout bounds that wait too.
    pub(super) fn arm_connect_timeout(&self, shard: &Shard, s: &Rc<EioSession>, conn: Rc<SioConn>) {
        let mut timeout = self.cfg.connect_timeout;
        if let Some(gate) = shard.service::<crate::auth::Gate>().filter(|g| g.requires_token()) {
            timeout = timeout.min(gate.timeout);
        }
        let s = s.clone();
        monoio::spawn(async move {
            monoio::select! {
                _ = monoio::time::sleep(timeout) => {},
                _ = s.wait_closed() => return,
                _ = conn.joined.wait() => return,
            }
            let Some(shard) = crate::shard::current() else { return };
            if !conn.joined.is_set() && !s.is_closed() {
                engineio::close(&shard, &s, engineio::CloseReason::ConnectTimeout, true);
            }
        });
    }

    pub(super) fn connect(&self, shard: &Shard, eio: &Rc<EioSession>, conn: &Rc<SioConn>, p: &Packet) {
        let nsp: Rc<str> = p.nsp.as_str().into();
        if conn.sockets.borrow().contains_key(&nsp) {
            return; // already connected to it: ignore the repeat, as the reference server does
        }
        if crate::limits::validate_name("namespace", &nsp, shard.node.config.limits.max_name_bytes).is_err() {
            crate::metrics::add(&shard.stats.limit_names, 1);
            eio.send(shard, text_packet(packet::encode_connect_error(&nsp, "Invalid namespace")));
            return;
        }
        let Some(ns_index) = self.namespaces.iter().position(|n| n.matches(&nsp)) else {
            eio.send(shard, text_packet(packet::encode_connect_error(&nsp, "Invalid namespace")));
            return;
        };
        let auth: Option<String> = p.data_json().map(str::to_string);
        let claim = if self.cfg.recovery.is_some() { auth.as_deref().and_then(recovery::parse_claim) } else { None };
        let Some(claim) = claim else {
            self.finish_connect(shard, eio, conn, ns_index, nsp, auth.as_deref(), None);
            return;
        };
        if super::cluster::is_remote_claim(self, &claim.pid) {
            return self.claim_from_cluster(eio, conn, ns_index, nsp, auth, claim);
        }
        match recovery::owner_of(&claim.pid).filter(|&o| o != shard.index && o < shard.shard_count()) {
            None => {
                let restored = self.take_stored(&claim.pid, claim.offset.as_deref());
                self.finish_connect(shard, eio, conn, ns_index, nsp, auth.as_deref(), restored);
            }
            Some(owner) => {
                // The socket lived on another shard: ask it for the state, then connect here.
                let (pid, offset) = (claim.pid, claim.offset);
                let ask = move |owner: Rc<Shard>| async move {
                    owner.service::<SocketIo>().and_then(|io| io.take_stored(&pid, offset.as_deref()))
                };
                let Some(shard) = crate::shard::current() else { return };
                let (eio, conn) = (eio.clone(), conn.clone());
                monoio::spawn(async move {
                    let restored = monoio::select! {
                        r = shard.call(owner, ask) => r.flatten(),
                        _ = monoio::time::sleep(Duration::from_secs(2)) => None,
                    };
                    let Some(io) = shard.service::<SocketIo>() else { return };
                    if !eio.is_closed() {
                        io.finish_connect(&shard, &eio, &conn, ns_index, nsp, auth.as_deref(), restored);
                    }
                });
            }
        }
    }

    /// Creates the socket (a recovered one when `restored` is given), answers the CONNECT and
    /// runs the connection handler.
    #[allow(clippy::too_many_arguments)]
    fn finish_connect(
        &self,
        shard: &Shard,
        eio: &Rc<EioSession>,
        conn: &SioConn,
        ns_index: usize,
        nsp: Rc<str>,
        auth: Option<&str>,
        restored: Option<Restored>,
    ) -> Option<Rc<Socket>> {
        let ns = self.namespaces.get(ns_index)?;
        let identity = match authenticate(shard, eio, auth) {
            Ok(i) => i,
            Err(e) => {
                let data = format!(
                    "{{\"message\":{},\"data\":{{\"code\":{},\"message\":{}}}}}",
                    json_string(e.code()),
                    json_string(e.code()),
                    json_string(&e.to_string())
                );
                let text = packet::encode(PacketKind::ConnectError, &nsp, None, Some(&data), 0);
                eio.send(shard, text_packet(text));
                return None;
            }
        };
        let recovering = self.cfg.recovery.is_some();
        let (id, pid, recovered): (SocketId, Option<Rc<str>>, bool) = match &restored {
            Some(r) => (SocketId::from(&*r.sid), Some(Rc::from(&*r.pid)), true),
            None => {
                let node = self.cluster().map(|c| c.node_id().clone());
                (SocketId::random(), recovering.then(|| recovery::new_pid(node.as_deref(), shard.index).into()), false)
            }
        };
        let socket = Rc::new(Socket {
            id,
            nsp: nsp.clone(),
            eio: eio.clone(),
            events: RefCell::new(HashMap::new()),
            on_disconnect: RefCell::new(Vec::new()),
            acks: RefCell::new(HashMap::new()),
            next_ack: Cell::new(0),
            rooms: RefCell::new(HashSet::new()),
            connected: Cell::new(false),
            pid,
            log: RefCell::new(std::collections::VecDeque::new()),
            // With recovery in a cluster, where the socket is in the stream: a fresh one has
            // everything up to what its node has seen (its direct emits carry that offset).
            floor: Cell::new(match &restored {
                Some(r) => r.floor,
                None => self.cluster().filter(|c| c.sequenced()).map_or(0, |c| c.stats().last_seq()),
            }),
            recovering: RefCell::new(restored.as_ref().filter(|r| r.from_stream).map(|_| Vec::new())),
            cut_off: Cell::new(false),
            breaks_seen: self.cluster().map_or(0, |c| c.stats().breaks()),
            recovered,
            identity,
            ns_index,
        });
        // A recovered socket already passed the middleware when it first connected.
        if !recovered {
            for m in &ns.middleware {
                if let Err(refusal) = m(shard, &socket, auth) {
                    let data = match &refusal.data {
                        Some(d) => format!("{{\"message\":{},\"data\":{d}}}", json_string(&refusal.message)),
                        None => format!("{{\"message\":{}}}", json_string(&refusal.message)),
                    };
                    let text = packet::encode(PacketKind::ConnectError, &nsp, None, Some(&data), 0);
                    eio.send(shard, text_packet(text));
                    return None;
                }
            }
        }
        socket.connected.set(true);
        conn.joined.set();
        self.fix_held_targets();
        conn.sockets.borrow_mut().insert(nsp.clone(), socket.clone());
        let first = {
            let mut sockets = self.sockets.borrow_mut();
            let all = sockets.entry(nsp.clone()).or_default();
            all.insert(socket.id.to_rc(), socket.clone());
            all.len() == 1
        };
        if first {
            if let Some(c) = self.cluster() {
                c.join(SocketIo::namespace_subject(&c, &nsp));
            }
        }
        // Every socket is in the room named by its own id, so `to(id)` reaches it anywhere. Only
        // the socket's own set records it: broadcasts find it through the socket table, and an
        // index entry per socket would cost every connection a map of its own.
        socket.rooms.borrow_mut().insert(socket.id.to_rc());
        let answer = match &socket.pid {
            Some(pid) => {
                let data = format!("{{\"sid\":{},\"pid\":{}}}", json_string(&socket.id), json_string(pid));
                packet::encode(PacketKind::Connect, &nsp, None, Some(&data), 0)
            }
            None => packet::encode_connect(&nsp, &socket.id),
        };
        eio.send_flushed(shard, text_packet(answer));
        if let Some(r) = restored {
            for room in &r.rooms {
                // Its own-id room is already recorded (and never indexed, see above).
                if **room != *socket.id {
                    socket.join_unchecked(self, room);
                }
            }
            let max = self.cfg.recovery.as_ref().map_or(0, |c| c.max_packets);
            for (offset, text, binaries) in r.missed {
                recovery::push_bounded(&mut socket.log.borrow_mut(), (offset, text.clone(), binaries.clone()), max);
                eio.send_prepared(shard, &prepare_bytes(text, &binaries));
            }
        }
        self.keep_session(&socket);
        if let Some(h) = &ns.on_connection {
            h(shard, &socket, auth);
        }
        Some(socket)
    }

    /// A client recovering a socket that another node held (or that died): the session and
    /// the missed broadcasts come from the cluster ([`super::cluster`]).
    fn claim_from_cluster(
        &self,
        eio: &Rc<EioSession>,
        conn: &Rc<SioConn>,
        ns_index: usize,
        nsp: Rc<str>,
        auth: Option<String>,
        claim: recovery::Claim,
    ) {
        let Some(shard) = crate::shard::current() else { return };
        let (eio, conn) = (eio.clone(), conn.clone());
        monoio::spawn(async move {
            let Some(io) = shard.service::<SocketIo>() else { return };
            let found = async {
                let (restored, from) = super::cluster::claim(&io, &claim.pid, claim.offset.as_deref()).await?;
                let (first, last) =
                    super::cluster::read_missed(&io, &nsp, &restored.sid, &restored.rooms, from).await?;
                Some((Restored { from_stream: true, ..restored }, first, last))
            };
            let found = monoio::select! {
                r = found => r,
                _ = monoio::time::sleep(Duration::from_secs(5)) => None,
            };
            if eio.is_closed() {
                return;
            }
            let Some((restored, first, last)) = found else {
                io.finish_connect(&shard, &eio, &conn, ns_index, nsp, auth.as_deref(), None);
                return;
            };
            let Some(socket) = io.finish_connect(&shard, &eio, &conn, ns_index, nsp, auth.as_deref(), Some(restored))
            else {
                return;
            };
            if !super::cluster::finish_replay(&shard, &io, &socket, first, last).await {
                tracing::warn!(sid = %socket.id, "recovered socket's replay failed; disconnecting it");
                socket.disconnect(&shard, &io, true);
            }
        });
    }

    /// Keeps a disconnected socket's state for the recovery window.
    fn store(&self, _shard: &Shard, pid: Rc<str>, stored: Stored) {
        let window = stored.window;
        self.stored.borrow_mut().insert(pid.clone(), stored);
        monoio::spawn(async move {
            monoio::time::sleep(window).await;
            if let Some(io) = crate::shard::current().and_then(|s| s.service::<SocketIo>()) {
                io.stored.borrow_mut().remove(&pid);
            }
        });
    }

    /// Takes a stored socket for a client that presents its private id and last offset.
    fn take_stored(&self, pid: &str, offset: Option<&str>) -> Option<Restored> {
        let stored = self.stored.borrow_mut().remove(pid)?;
        stored.restore(pid, offset)
    }

    pub(super) fn remove_socket(&self, shard: &Shard, s: &Rc<Socket>, reason: &str) {
        if !s.connected.replace(false) {
            return;
        }
        self.fix_held_targets();
        let in_stream = self.cluster().is_some_and(|c| c.sequenced());
        if let (Some(cfg), Some(pid), false) = (&self.cfg.recovery, &s.pid, in_stream) {
            if recovery::is_recoverable(reason) {
                self.store(shard, pid.clone(), Stored::from_socket(s, cfg.window));
            }
        }
        // Out of the room index first, so that nothing broadcast from here on reaches the
        // socket; `s.rooms` is kept until the handlers ran, which need to know where it was
        // (the IM app tells those channels the user went offline).
        let rooms: Vec<Rc<str>> = s.rooms.borrow().iter().cloned().collect();
        for r in &rooms {
            self.index_leave(s, r);
        }
        let last = match self.sockets.borrow_mut().get_mut(&*s.nsp) {
            Some(all) => all.remove(&*s.id).is_some() && all.is_empty(),
            None => false,
        };
        if last {
            if let Some(c) = self.cluster() {
                c.leave(&SocketIo::namespace_subject(&c, &s.nsp));
            }
        }
        if let Some(conn) = self.conns.borrow().get(&s.eio.id) {
            conn.sockets.borrow_mut().remove(&*s.nsp);
        }
        let pending: Vec<AckCallback> = s.acks.borrow_mut().drain().map(|(_, cb)| cb).collect();
        for cb in pending {
            cb(shard, Err(AckError::Disconnected));
        }
        let handlers = s.on_disconnect.borrow().clone();
        for h in handlers {
            h(shard, s, reason);
        }
        // Again, for any room a handler joined.
        let rooms: Vec<Rc<str>> = s.rooms.borrow_mut().drain().collect();
        for r in &rooms {
            self.index_leave(s, r);
        }
    }
}

/// Who a CONNECT is from: the `token` of its auth payload, else the handshake's identity, else
/// what the authenticator makes of no token (anonymous, or `missing_token`).
fn authenticate(
    shard: &Shard,
    eio: &EioSession,
    auth: Option<&str>,
) -> Result<Rc<crate::auth::Identity>, crate::auth::AuthError> {
    #[derive(serde::Deserialize)]
    struct Auth {
        token: Option<String>,
    }
    let token = auth.and_then(|a| serde_json::from_str::<Auth>(a).ok()).and_then(|a| a.token);
    if token.is_none() {
        if let Some(i) = eio.identity.borrow().as_ref() {
            return Ok(i.clone());
        }
    }
    let gate = shard.service::<crate::auth::Gate>().ok_or(crate::auth::AuthError::Unavailable)?;
    gate.identify(token.as_deref()).map(Rc::new)
}

/// A Socket.IO socket id: 120 random bits as 20 base64url characters.
pub(super) fn random_id() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 15]>())
}

pub(super) fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
