//! `soak`: many clients of three kinds held for a long run, with traffic and churn, and every
//! message accounted for.
//!
//! The kinds (`--mix`): Socket.IO over WebSocket, Socket.IO over Engine.IO long-polling
//! ([`crate::longpoll`]), and imks's native protocol at `/ws`. Each client sends at
//! `--rate` ÷ `--connections` per second (open loop). A Socket.IO client joins one room
//! (`42["join","r3"]`, acked `"ok"`) and alternates an `echo-ack` round trip with a `publish`
//! to its room, which the server broadcasts as `msg` to every member, the publisher included.
//! Native clients come in pairs; each sends `chat` to its peer's user and gets `sent` and
//! `delivered` acks back. Every second `--churn` clients leave cleanly and are replaced by new
//! ones in their slots, which join and send in turn.
//!
//! # What is owed to whom
//!
//! A message counts only when its (intended) send time lies in the measurement window, and a
//! client is owed only what was sent while it was *in*: set up, joined, and not leaving.
//! Leaving is a step of its own: a leaving client first stops being counted (it tells the
//! books, under their lock), then stops sending, waits until it has received everything it is
//! owed (at most `--drain` seconds), and only then closes. So the count is exact, not a matter
//! of timing:
//!
//! - **Acks**: one answer per `echo-ack` a client sent; it does not leave while any is out.
//! - **Room broadcasts**: each room has a counter of its measured publishes, and a publish takes
//!   the next number under the room's lock and carries it (`"n"`). A member reads the counter
//!   when its join is acknowledged (`base`) and when it starts leaving (`end`), both under the
//!   lock: it is owed exactly the publishes numbered `base + 1 ..= end`, and counts only those
//!   when they arrive. A publish numbered after `base` was written after the join was
//!   acknowledged, so the server already had the member in the room.
//! - **Direct messages**: a native client's seat ([`crate::shared::Seat`]) holds its user while
//!   it is in. Its peer sends only while the seat holds a user, and counts one delivery owed to
//!   that session per measured message, under the seat's lock; a leaving client empties its
//!   seat first and so knows what it is owed. The sender is owed a `sent` and a `delivered` ack
//!   per measured message and does not leave before they are in. While the peer is away
//!   (leaving or reconnecting) its sends are skipped and counted as `skipped`.
//!
//! Rooms and pairs live in one process each ([`crate::plan::plan`]), so the books are local.
//! At the end of the run every client leaves the same way, then the run checks the server's
//! health for connections left behind (see `lib.rs`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::chat::{hello, Seen};
use super::fanout::join;
use super::Outcome;
use crate::clock::{now_ns, secs_to_ns};
use crate::conn::{self, Behavior, Conn, ConnError, Cx, Io, Leave, Produce};
use crate::longpoll::{self, PollConn};
use crate::params::{Load, Protocol};
use crate::plan::{room_name, spread, Kind, Role, Sched};
use crate::proto::native::{self, AckStatus, MsgId, ServerMsg};
use crate::proto::sio::{self, Packet};
use crate::proto::stamp;
use crate::proto::ws::Opcode;
use crate::shared::{Run, SoakBooks, DRAIN, RUN, SETUP, STOP};
use crate::stats::{Life, T_ACK, T_BROADCAST, T_DM_DELIVERED, T_DM_DELIVERY, T_DM_SENT};
use crate::target::Target;

const SIO_WS_PATH: &str = "/socket.io/?EIO=4&transport=websocket";
const SIO_POLLING_PATH: &str = "/socket.io/?EIO=4&transport=polling";
const NATIVE_PATH: &str = "/ws";
/// Longest a client waits for the server's goodbye when it closes.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Pause before a replacement that failed to set up tries again.
const RETRY_NS: u64 = 1_000_000_000;
/// The ack id of the join; `echo-ack` ids start above it.
const FIRST_ACK_ID: u64 = 2;

/// A client's connection, of whichever transport.
enum Session {
    Ws(Conn),
    Polling(PollConn),
}

/// One slot's life: a client, and when churn takes it, the next one, until the run drains.
/// The first set-up counts as the slot's set-up (like [`super::conn_task`]); later ones are
/// replacements.
pub async fn slot_task(run: Arc<Run>, sem: Arc<Semaphore>, slot: usize, role: Role) -> Outcome {
    let Role::Soak { kind, index, group } = role else { return Outcome::SetupFailed };
    let Some(books) = run.soak.as_ref() else { return Outcome::SetupFailed };
    let outcome = slot_loop(&run, books, &sem, slot, (kind, index, group)).await;
    books.finished.fetch_add(1, Ordering::SeqCst);
    outcome
}

async fn slot_loop(
    run: &Run,
    books: &SoakBooks,
    sem: &Semaphore,
    slot: usize,
    (kind, index, group): (Kind, usize, usize),
) -> Outcome {
    let k = kind as usize;
    // A native sender's sequence numbers go on from one session to the next, so its peer's
    // sessions never see a number twice.
    let mut native_seq = 0u64;
    let mut outcome = Outcome::Alive;
    let mut first = true;
    loop {
        let phase = run.control.phase();
        if (first && phase != SETUP) || (!first && phase != RUN) {
            if first {
                run.stats.error("setup_timeout");
                run.setup_failed.fetch_add(1, Ordering::Relaxed);
                books.counts.life(k, Life::Failed);
                outcome = Outcome::SetupFailed;
            }
            break;
        }
        let t0 = now_ns();
        let set_up = {
            let Ok(_permit) = sem.acquire().await else { return Outcome::SetupFailed };
            let timeout = Duration::from_nanos(secs_to_ns(run.params.connect_timeout_s));
            tokio::time::timeout(timeout, set_up(run, kind, group, slot, t0)).await
        };
        let (session, base) = match set_up {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                run.stats.error(e.kind());
                books.counts.life(k, Life::Failed);
                if first {
                    run.setup_failed.fetch_add(1, Ordering::Relaxed);
                    return Outcome::SetupFailed;
                }
                pause(run, RETRY_NS).await;
                continue;
            }
            Err(_) => {
                run.stats.error(ConnError::Timeout.kind());
                books.counts.life(k, Life::Failed);
                if first {
                    run.setup_failed.fetch_add(1, Ordering::Relaxed);
                    return Outcome::SetupFailed;
                }
                pause(run, RETRY_NS).await;
                continue;
            }
        };
        if first {
            if let Ok(mut h) = run.setup_hist.lock() {
                h.saturating_record(now_ns().saturating_sub(t0).max(1));
            }
            run.setup_ok.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        books.counts.life(k, Life::Opened);
        run.alive.fetch_add(1, Ordering::Relaxed);
        let end = match kind {
            Kind::Native => {
                let mut beh = Native::new(run, slot, index, group, native_seq);
                let end = go(session, &mut beh, run, slot).await;
                beh.abandon(books);
                native_seq = beh.seq;
                end
            }
            _ => {
                let mut beh = SioClient::new(run, kind, (slot, index), group, base);
                let end = go(session, &mut beh, run, slot).await;
                beh.abandon(books);
                end
            }
        };
        run.alive.fetch_sub(1, Ordering::Relaxed);
        match end {
            Ok(()) => books.counts.life(k, Life::Left),
            Err(e) => {
                if run.control.phase() != STOP {
                    run.stats.error(e.kind());
                }
                books.counts.life(k, Life::Dropped);
                outcome = Outcome::Dropped;
            }
        }
        books.leave[slot].store(false, Ordering::SeqCst);
        if run.control.phase() != RUN {
            break;
        }
    }
    outcome
}

/// Sleeps `ns`, or less when the run leaves its sending phase.
async fn pause(run: &Run, ns: u64) {
    let until = now_ns() + ns;
    while now_ns() < until && run.control.phase() == RUN {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects a client of `kind` and brings it in: a Socket.IO client has joined room `group`
/// and taken its place in the room's books, a native client has its user in its seat.
async fn set_up(run: &Run, kind: Kind, group: usize, slot: usize, seed: u64) -> Result<(Session, u64), ConnError> {
    let p = &run.params;
    let base = run.targets.first().ok_or(ConnError::Refused("no --url".into()))?;
    let target = |path: &str| Target { addr: base.addr, host: base.host.clone(), path: path.to_string() };
    let seed = seed ^ (slot as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let session = match kind {
        Kind::SioWs => {
            let mut c =
                conn::connect(&target(SIO_WS_PATH), run.source_ip, Protocol::Sio, p.max_message, seed, None).await?;
            join(&mut c, &room_name(group)).await?;
            Session::Ws(c)
        }
        Kind::SioPolling => {
            let mut c =
                longpoll::connect(base.addr, &base.host, SIO_POLLING_PATH, run.source_ip, p.max_message, seed).await?;
            poll_join(&mut c, &room_name(group)).await?;
            Session::Polling(c)
        }
        Kind::Native => {
            let mut c =
                conn::connect(&target(NATIVE_PATH), run.source_ip, Protocol::Ws, p.max_message, seed, None).await?;
            let user = hello(&mut c).await?;
            let books = run.soak.as_ref().ok_or(ConnError::Refused("not a soak run".into()))?;
            if let Some(seat) = books.seats.get(slot) {
                if let Ok(mut s) = seat.lock() {
                    s.user = Some(user.into());
                    s.owed = 0;
                }
            }
            return Ok((Session::Ws(c), 0));
        }
    };
    // The room's count when the join was acknowledged: publishes numbered after it are owed.
    let books = run.soak.as_ref().ok_or(ConnError::Refused("not a soak run".into()))?;
    let base = books.rooms.get(group).and_then(|r| r.lock().ok().map(|n| *n)).unwrap_or(0);
    Ok((session, base))
}

/// Joins `room` over long-polling and waits for the `"ok"`.
async fn poll_join(c: &mut PollConn, room: &str) -> Result<(), ConnError> {
    c.io.send_built(Opcode::Text, |b| {
        sio::event_head(b, Some(1), "join");
        sio::push_str(b, room);
        b.push(b']');
    });
    c.flush().await?;
    loop {
        let packet = c.recv().await?;
        match sio::parse(&packet)? {
            Packet::Ack { id: 1, data, .. } if sio::first_str(data) == Some(b"ok") => return Ok(()),
            Packet::Ack { id: 1, data, .. } => {
                return Err(ConnError::Refused(format!("join answered {}", String::from_utf8_lossy(data))))
            }
            Packet::Close => return Err(sio::SioError::Closed.into()),
            _ => {}
        }
    }
}

/// Drives `beh` on `session` until it leaves, then closes the session cleanly.
async fn go<B: Behavior>(session: Session, beh: &mut B, run: &Run, slot: usize) -> Result<(), ConnError> {
    match session {
        Session::Ws(c) => {
            let (res, c) = conn::drive_mut(c, beh, run, slot, slot).await;
            if res.is_ok() {
                c.close(CLOSE_WAIT).await;
            }
            res
        }
        Session::Polling(mut c) => {
            let res = c.drive(beh, run, slot, slot).await;
            if res.is_ok() {
                c.close(CLOSE_WAIT).await;
            }
            res
        }
    }
}

/// Whether this client should start leaving: churn picked its slot, or the run is draining.
fn told_to_leave(cx: &Cx<'_>, books: &SoakBooks, slot: usize) -> bool {
    let phase = cx.run.control.phase();
    phase == DRAIN || phase == STOP || books.leave.get(slot).is_some_and(|l| l.load(Ordering::SeqCst))
}

/// Appends `{"room":"r3","n":17,"seq":5,"t":123,"pad":"xx"}`, `size` bytes when it allows.
fn write_stamp(out: &mut Vec<u8>, room: Option<&str>, n: u64, seq: u64, t: u64, size: usize) {
    let start = out.len();
    out.push(b'{');
    if let Some(room) = room {
        out.extend_from_slice(b"\"room\":");
        sio::push_str(out, room);
        out.extend_from_slice(b",\"n\":");
        sio::push_u64(out, n);
        out.push(b',');
    }
    out.extend_from_slice(b"\"seq\":");
    sio::push_u64(out, seq);
    out.extend_from_slice(b",\"t\":");
    sio::push_u64(out, t);
    out.extend_from_slice(b",\"pad\":\"");
    let used = out.len() - start + 2;
    out.resize(out.len() + size.saturating_sub(used), b'x');
    out.extend_from_slice(b"\"}");
}

/// A Socket.IO client, over either transport: `echo-ack` round trips and publishes to its room,
/// and the room's broadcasts.
struct SioClient {
    kind: usize,
    slot: usize,
    room: usize,
    room_name: String,
    load: Load,
    senders: usize,
    index: usize,
    size: usize,
    max_inflight: usize,
    drain_ns: u64,
    sched: Option<Sched>,
    /// A replacement's first send time: the slot's schedule from when it is in.
    resume: u64,
    seq: u64,
    next_id: u64,
    /// `echo-ack`s out: id → send time.
    out: HashMap<u64, u64>,
    /// The room's count at the join; at the start of leaving, with its deadline.
    base: u64,
    end: Option<(u64, u64)>,
    seen: Seen,
    received: u64,
}

impl SioClient {
    fn new(run: &Run, kind: Kind, (slot, index): (usize, usize), room: usize, base: u64) -> SioClient {
        SioClient {
            kind: kind as usize,
            slot,
            room,
            room_name: room_name(room),
            load: run.params.load,
            senders: run.params.connections,
            index,
            size: run.params.size,
            max_inflight: run.params.max_inflight,
            drain_ns: secs_to_ns(run.params.drain_s),
            sched: None,
            resume: resume(run),
            seq: 0,
            next_id: FIRST_ACK_ID,
            out: HashMap::new(),
            base,
            end: None,
            seen: Seen::default(),
            received: 0,
        }
    }

    /// Starts leaving: what the room's count says now is the last publish owed.
    fn start_leaving(&mut self, books: &SoakBooks, now: u64) {
        if self.end.is_some() {
            return;
        }
        let end = books.rooms.get(self.room).and_then(|r| r.lock().ok().map(|n| *n)).unwrap_or(self.base);
        books.counts.expect(self.kind, T_BROADCAST, end.saturating_sub(self.base));
        self.end = Some((end, now + self.drain_ns));
    }

    /// The session ended (left, or lost): settles the books if leaving had not.
    fn abandon(&mut self, books: &SoakBooks) {
        self.start_leaving(books, now_ns());
    }

    fn broadcast(&mut self, data: &[u8], cx: &mut Cx<'_>) {
        let (Some(n), Some(t)) = (stamp::find_u64(data, b"\"n\""), stamp::find_u64(data, b"\"t\"")) else { return };
        let last = self.end.map_or(u64::MAX, |e| e.0);
        if n <= self.base || n > last {
            return;
        }
        let Some(books) = cx.run.soak.as_ref() else { return };
        match self.seen.insert(n - self.base) {
            Some(true) => {
                self.received += 1;
                books.counts.receive(self.kind, T_BROADCAST);
                cx.record(t);
            }
            _ => books.counts.duplicate(self.kind, T_BROADCAST),
        }
    }
}

impl Behavior for SioClient {
    fn on_sio(&mut self, _io: &mut Io, p: Packet<'_>, cx: &mut Cx<'_>) -> Result<(), ConnError> {
        let Some(books) = cx.run.soak.as_ref() else { return Ok(()) };
        match p {
            Packet::Ack { id, .. } => match self.out.remove(&id) {
                Some(t) if cx.run.measured(t) => {
                    books.counts.receive(self.kind, T_ACK);
                    cx.record(t);
                }
                Some(_) => {}
                None if (FIRST_ACK_ID..self.next_id).contains(&id) => books.counts.duplicate(self.kind, T_ACK),
                None => return Err(ConnError::BadReply),
            },
            Packet::Event { data, .. } if data.starts_with(b"[\"msg\",") => self.broadcast(data, cx),
            _ => {}
        }
        Ok(())
    }

    fn produce(&mut self, io: &mut Io, cx: &mut Cx<'_>, now: u64) -> Produce {
        if self.end.is_some() {
            return Produce::Idle;
        }
        let Some(books) = cx.run.soak.as_ref() else { return Produce::Idle };
        let (load, senders, index, resume) = (self.load, self.senders, self.index, self.resume);
        let mut sched = *self.sched.get_or_insert_with(|| new_sched(load, senders, index, resume, cx));
        let end = cx.run.control.planned_end();
        let res = loop {
            let t = match sched.next_paced(now, end, (self.out.len(), self.max_inflight), io, cx) {
                Ok(t) => t,
                Err(p) => break p,
            };
            let measured = cx.run.measured(t);
            self.seq += 1;
            let (seq, size) = (self.seq, self.size);
            // Half the clients start with an ack and half with a publish, so both go all along.
            if (seq + self.index as u64) % 2 == 1 {
                let id = self.next_id;
                self.next_id += 1;
                self.out.insert(id, t);
                if measured {
                    books.counts.expect(self.kind, T_ACK, 1);
                }
                io.send_built(Opcode::Text, |b| {
                    sio::event_head(b, Some(id), "echo-ack");
                    write_stamp(b, None, 0, seq, t, size);
                    b.push(b']');
                });
            } else {
                // The publish's number in its room, taken under the room's lock: see the module
                // doc. Unmeasured publishes carry 0 and are owed to nobody.
                let n = match books.rooms.get(self.room).and_then(|r| r.lock().ok()) {
                    Some(mut count) if measured => {
                        *count += 1;
                        *count
                    }
                    _ => 0,
                };
                let room = self.room_name.as_str();
                io.send_built(Opcode::Text, |b| {
                    sio::event_head(b, None, "publish");
                    write_stamp(b, Some(room), n, seq, t, size);
                    b.push(b']');
                });
            }
            if measured {
                books.counts.life(self.kind, Life::Sent);
            }
            sched.advance();
        };
        self.sched = Some(sched);
        res
    }

    fn leave(&mut self, cx: &mut Cx<'_>, now: u64) -> Leave {
        let Some(books) = cx.run.soak.as_ref() else { return Leave::Now };
        if self.end.is_none() {
            if !told_to_leave(cx, books, self.slot) {
                return Leave::Stay;
            }
            self.start_leaving(books, now);
        }
        let Some((end, deadline)) = self.end else { return Leave::Now };
        if (self.out.is_empty() && self.received >= end.saturating_sub(self.base)) || now >= deadline {
            Leave::Now
        } else {
            Leave::At(deadline)
        }
    }

    fn finish(&mut self, cx: &mut Cx<'_>) {
        finish(self.sched.as_ref(), cx);
    }
}

/// A native client: direct messages to its peer's user, their acks, and the peer's messages.
struct Native {
    slot: usize,
    peer: usize,
    index: usize,
    load: Load,
    senders: usize,
    size: usize,
    max_inflight: usize,
    drain_ns: u64,
    sched: Option<Sched>,
    resume: u64,
    /// Last sequence number used (over the slot's sessions).
    seq: u64,
    /// First sequence number of this session.
    first_seq: u64,
    /// Measured messages sent by this session, and their acks so far.
    sent: u64,
    sent_acks: u64,
    delivered_acks: u64,
    seen_sent: Seen,
    seen_delivered: Seen,
    /// Messages whose `delivered` ack is still out (the in-flight bound).
    inflight: usize,
    deliveries: Seen,
    received: u64,
    /// Deliveries owed, once leaving, and the deadline.
    end: Option<(u64, u64)>,
}

impl Native {
    fn new(run: &Run, slot: usize, index: usize, peer: usize, seq: u64) -> Native {
        Native {
            slot,
            peer,
            index,
            load: run.params.load,
            senders: run.params.connections,
            size: run.params.size,
            max_inflight: run.params.max_inflight,
            drain_ns: secs_to_ns(run.params.drain_s),
            sched: None,
            resume: resume(run),
            seq,
            first_seq: seq,
            sent: 0,
            sent_acks: 0,
            delivered_acks: 0,
            seen_sent: Seen::default(),
            seen_delivered: Seen::default(),
            inflight: 0,
            deliveries: Seen::default(),
            received: 0,
            end: None,
        }
    }

    /// Starts leaving: empties the seat, so the peer stops sending, and learns what is owed.
    fn start_leaving(&mut self, books: &SoakBooks, now: u64) {
        if self.end.is_some() {
            return;
        }
        let owed = books
            .seats
            .get(self.slot)
            .and_then(|s| s.lock().ok())
            .map(|mut seat| {
                seat.user = None;
                std::mem::take(&mut seat.owed)
            })
            .unwrap_or(0);
        books.counts.expect(Kind::Native as usize, T_DM_DELIVERY, owed);
        self.end = Some((owed, now + self.drain_ns));
    }

    fn abandon(&mut self, books: &SoakBooks) {
        self.start_leaving(books, now_ns());
    }

    fn ack(&mut self, status: AckStatus, id: MsgId, cx: &mut Cx<'_>) -> Result<(), ConnError> {
        if id.sender != self.index as u64 || id.seq <= self.first_seq || id.seq > self.seq {
            return Err(ConnError::BadReply);
        }
        let Some(books) = cx.run.soak.as_ref() else { return Ok(()) };
        let n = id.seq - self.first_seq;
        let (seen, count, ty) = match status {
            AckStatus::Sent => (&mut self.seen_sent, &mut self.sent_acks, T_DM_SENT),
            AckStatus::Delivered => (&mut self.seen_delivered, &mut self.delivered_acks, T_DM_DELIVERED),
        };
        let measured = cx.run.measured(id.t);
        match seen.insert(n) {
            Some(true) => {
                if status == AckStatus::Delivered {
                    self.inflight = self.inflight.saturating_sub(1);
                }
                if measured {
                    *count += 1;
                    books.counts.receive(Kind::Native as usize, ty);
                }
            }
            Some(false) if measured => books.counts.duplicate(Kind::Native as usize, ty),
            Some(false) => {}
            None => return Err(ConnError::BadReply),
        }
        Ok(())
    }

    fn delivery(&mut self, id: MsgId, cx: &mut Cx<'_>) -> Result<(), ConnError> {
        let Some(books) = cx.run.soak.as_ref() else { return Ok(()) };
        if !cx.run.measured(id.t) {
            return Ok(());
        }
        match self.deliveries.insert(id.seq) {
            Some(true) => {
                self.received += 1;
                books.counts.receive(Kind::Native as usize, T_DM_DELIVERY);
                cx.record(id.t);
            }
            Some(false) => books.counts.duplicate(Kind::Native as usize, T_DM_DELIVERY),
            None => return Err(ConnError::BadReply),
        }
        Ok(())
    }
}

impl Behavior for Native {
    fn on_ws(&mut self, _io: &mut Io, op: Opcode, data: &[u8], cx: &mut Cx<'_>) -> Result<(), ConnError> {
        if op != Opcode::Text {
            return Err(ConnError::BadReply);
        }
        match native::parse(data).ok_or(ConnError::BadReply)? {
            ServerMsg::Ack { status, id } => self.ack(status, id.ok_or(ConnError::BadReply)?, cx),
            ServerMsg::Chat { id } => self.delivery(id.ok_or(ConnError::BadReply)?, cx),
            ServerMsg::Error { code } => {
                cx.run.stats.error(match code {
                    b"rate_limited" => "rate_limited",
                    b"store_failed" => "store_failed",
                    _ => "server_error",
                });
                Ok(())
            }
            ServerMsg::Other => Ok(()),
        }
    }

    fn produce(&mut self, io: &mut Io, cx: &mut Cx<'_>, now: u64) -> Produce {
        if self.end.is_some() {
            return Produce::Idle;
        }
        let Some(books) = cx.run.soak.as_ref() else { return Produce::Idle };
        let (load, senders, index, resume) = (self.load, self.senders, self.index, self.resume);
        let sched = self.sched.get_or_insert_with(|| new_sched(load, senders, index, resume, cx));
        let end = cx.run.control.planned_end();
        loop {
            let blocked = self.inflight >= sched.in_flight_limit(self.max_inflight) || io.pending() >= conn::WBUF_HIGH;
            let t = match sched.next_send(now, end, blocked) {
                Ok(t) => t,
                Err(p) => return p,
            };
            let measured = cx.run.measured(t);
            // The peer's user, and one more delivery owed to it, under its seat's lock.
            let user = match books.seats.get(self.peer).and_then(|s| s.lock().ok()) {
                Some(mut seat) => match seat.user.clone() {
                    Some(user) if cx.admit(t) => {
                        if measured {
                            seat.owed += 1;
                        }
                        Some(user)
                    }
                    Some(_) => return Produce::Idle,
                    None => None,
                },
                None => None,
            };
            match user {
                Some(user) => {
                    self.seq += 1;
                    let id = MsgId { sender: index as u64, seq: self.seq, t };
                    io.send_built(Opcode::Text, |b| native::write_chat(b, &id, &user, self.size));
                    self.inflight += 1;
                    if measured {
                        self.sent += 1;
                        books.counts.expect(Kind::Native as usize, T_DM_SENT, 1);
                        books.counts.expect(Kind::Native as usize, T_DM_DELIVERED, 1);
                        books.counts.life(Kind::Native as usize, Life::Sent);
                    }
                }
                None if measured => books.counts.life(Kind::Native as usize, Life::Skipped),
                None => {}
            }
            sched.advance();
        }
    }

    fn leave(&mut self, cx: &mut Cx<'_>, now: u64) -> Leave {
        let Some(books) = cx.run.soak.as_ref() else { return Leave::Now };
        if self.end.is_none() {
            if !told_to_leave(cx, books, self.slot) {
                return Leave::Stay;
            }
            self.start_leaving(books, now);
        }
        let Some((owed, deadline)) = self.end else { return Leave::Now };
        let acked = self.sent_acks >= self.sent && self.delivered_acks >= self.sent && self.inflight == 0;
        if (acked && self.received >= owed) || now >= deadline {
            Leave::Now
        } else {
            Leave::At(deadline)
        }
    }

    fn finish(&mut self, cx: &mut Cx<'_>) {
        finish(self.sched.as_ref(), cx);
    }
}

/// When a client that is in now sends first: at once for the first clients (their schedule
/// starts with the run), from now on for a replacement (0: no skipping).
fn resume(run: &Run) -> u64 {
    if run.control.phase() == RUN {
        now_ns()
    } else {
        0
    }
}

/// A client's schedule: its slot's, taken over from `resume`. The clients' send times are
/// staggered by a permutation of their indices rather than the indices themselves, which come
/// in blocks by kind: so every kind sends all along, not one kind after another.
fn new_sched(load: Load, senders: usize, index: usize, resume: u64, cx: &Cx<'_>) -> Sched {
    let mut s = Sched::new(load, senders, spread(index, senders), cx.run.control.start_ns());
    s.skip_until(resume);
    s
}

/// Sends a client never made count as unsent only at the end of the run: a client that leaves
/// earlier hands its slot's schedule to its replacement.
fn finish(sched: Option<&Sched>, cx: &mut Cx<'_>) {
    if cx.run.control.phase() != RUN {
        super::count_unsent(sched, cx);
    }
}

/// Churn: tells `n` clients of this process to leave (each is replaced once it has).
pub fn churn(run: &Run, n: usize) {
    let Some(books) = run.soak.as_ref() else { return };
    for slot in books.pick(n) {
        if let Some(flag) = books.leave.get(slot) {
            flag.store(true, Ordering::SeqCst);
            run.control.wake(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_carry_the_room_number_and_the_send_time() {
        let mut out = Vec::new();
        write_stamp(&mut out, Some("r3"), 17, 5, 123_456, 80);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!((v["room"].as_str(), v["n"].as_u64(), v["t"].as_u64()), (Some("r3"), Some(17), Some(123_456)));
        assert_eq!(out.len(), 80);
        assert_eq!(stamp::find_u64(&out, b"\"n\""), Some(17));
        let mut out = Vec::new();
        write_stamp(&mut out, None, 0, 1, 9, 0);
        assert_eq!(stamp::find_u64(&out, b"\"n\""), None);
        assert_eq!(stamp::find_u64(&out, b"\"t\""), Some(9));
    }
}
