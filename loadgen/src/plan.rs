//! What a run decides before any connection opens: who each connection is ([`Role`]) and which
//! `--url` it connects to, this process's share of the run ([`Plan`], from [`plan`]), and how
//! each sender paces its sends ([`Sched`]).
//!
//! Kept apart from the behaviors in [`crate::scenario`] so that the run state, which holds the
//! plan, and the connection driver below the behaviors need not name them: this is plain data
//! and arithmetic over the parameters.

use crate::params::{share, soak_split, Load, Params, Scenario, Spread};

/// Soak: the three kinds of client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Socket.IO over WebSocket.
    SioWs = 0,
    /// Socket.IO over Engine.IO long-polling.
    SioPolling = 1,
    /// imks's native protocol at `/ws`.
    Native = 2,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::SioWs, Kind::SioPolling, Kind::Native];

    pub fn name(self) -> &'static str {
        match self {
            Kind::SioWs => "sio_ws",
            Kind::SioPolling => "sio_polling",
            Kind::Native => "native",
        }
    }

    /// Connections (file descriptors) one client of this kind holds: a long-polling client has
    /// its parked `GET` on one and its `POST`s on another.
    pub fn fds(self) -> usize {
        match self {
            Kind::SioPolling => 2,
            _ => 1,
        }
    }
}

/// What one connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Echo or ack requests; `sender` is its index among all senders of the run.
    RoundTrip {
        sender: usize,
    },
    Subscriber {
        room: usize,
    },
    Publisher {
        index: usize,
    },
    /// One of a chat pair: `index` over the run's connections, `peer` the other one's local slot.
    Chat {
        index: usize,
        peer: usize,
    },
    Idle,
    /// A soak client: `index` over the run; `group` is the (global) room of a Socket.IO client,
    /// the local slot of a native client's peer.
    Soak {
        kind: Kind,
        index: usize,
        group: usize,
    },
}

impl Role {
    /// The connection's index over the run (worker processes included), which picks its token.
    pub fn index(self, slot: usize, worker: usize, workers: usize) -> usize {
        match self {
            Role::RoundTrip { sender } => sender,
            Role::Chat { index, .. } | Role::Soak { index, .. } => index,
            _ => slot * workers + worker,
        }
    }
}

/// This process's share of the run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub roles: Vec<Role>,
    /// Which of the run's URLs each connection of `roles` connects to (its index in
    /// `Params::urls`).
    pub targets: Vec<usize>,
    /// Sending connections over all processes; open-loop pacing divides the rate among them.
    pub senders: usize,
    /// Fan-out: subscribers of each room in this process.
    pub local_subs: Vec<usize>,
    pub max_local_subs: usize,
    pub local_publishers: usize,
}

/// Splits the run between worker processes. Fan-out deals each room's subscribers round-robin
/// so every process holds some of every room, and publisher `i` runs in process `i % K`: a
/// publisher then sees deliveries of its own messages locally, which closed-loop fan-out needs.
/// Chat deals out pairs, connections `2k` and `2k + 1`, so each learns its peer's user locally.
///
/// With several URLs, connections are dealt over them by their index over the run (a chat
/// pair's two sides land on different nodes); fan-out's publishers all connect to the first,
/// and its subscribers go where [`Spread`] says.
pub fn plan(p: &Params) -> Plan {
    let (wi, wk) = p.worker.map(|w| (w.index, w.count)).unwrap_or((0, 1));
    let nodes = p.urls.len().max(1);
    let mut plan = Plan::default();
    match p.scenario {
        Scenario::Echo | Scenario::Ack => {
            let (first, n) = share(p.connections, wi, wk);
            for sender in first..first + n {
                plan.push(Role::RoundTrip { sender }, sender % nodes);
            }
            plan.senders = p.connections;
        }
        Scenario::Idle => {
            let (_, n) = share(p.connections, wi, wk);
            for slot in 0..n {
                plan.push(Role::Idle, Role::Idle.index(slot, wi, wk) % nodes);
            }
        }
        Scenario::Fanout => {
            plan.local_subs = vec![0; p.rooms];
            for room in 0..p.rooms {
                for s in 0..p.subscribers {
                    if (room * p.subscribers + s) % wk == wi {
                        let node = match p.spread {
                            Spread::Members => s % nodes,
                            Spread::Rooms => room % nodes,
                        };
                        plan.push(Role::Subscriber { room }, node);
                        plan.local_subs[room] += 1;
                    }
                }
            }
            plan.max_local_subs = plan.local_subs.iter().copied().max().unwrap_or(0);
            for index in (wi..p.publishers).step_by(wk) {
                plan.push(Role::Publisher { index }, 0);
                plan.local_publishers += 1;
            }
            plan.senders = p.publishers;
        }
        Scenario::Chat => {
            let (first, pairs) = share(p.connections / 2, wi, wk);
            for pair in 0..pairs {
                let (a, b) = (2 * pair, 2 * pair + 1);
                let index = 2 * (first + pair);
                plan.push(Role::Chat { index, peer: b }, index % nodes);
                plan.push(Role::Chat { index: index + 1, peer: a }, (index + 1) % nodes);
            }
            plan.senders = p.connections;
        }
        Scenario::Soak => {
            // Each room lives in one process (room r in process r mod K) and each native pair
            // too, so the books that say who is owed what stay local (see scenario::soak).
            let [ws, polling, native] = soak_split(p.connections, p.mix);
            let rooms: Vec<usize> = (wi..p.rooms).step_by(wk).collect();
            let mut sio = 0;
            for (kind, n, offset) in [(Kind::SioWs, ws, 0), (Kind::SioPolling, polling, ws)] {
                let (first, count) = share(n, wi, wk);
                for index in offset + first..offset + first + count {
                    let group = rooms.get(sio % rooms.len().max(1)).copied().unwrap_or(0);
                    plan.push(Role::Soak { kind, index, group }, 0);
                    sio += 1;
                }
            }
            let (first, pairs) = share(native / 2, wi, wk);
            for pair in first..first + pairs {
                let (index, slot) = (ws + polling + 2 * pair, plan.roles.len());
                plan.push(Role::Soak { kind: Kind::Native, index, group: slot + 1 }, 0);
                plan.push(Role::Soak { kind: Kind::Native, index: index + 1, group: slot }, 0);
            }
            plan.senders = p.connections;
        }
        Scenario::Connect => {}
    }
    plan
}

impl Plan {
    fn push(&mut self, role: Role, target: usize) {
        self.roles.push(role);
        self.targets.push(target);
    }

    /// The URL (index) connection `slot` connects to.
    pub fn target(&self, slot: usize) -> usize {
        self.targets.get(slot).copied().unwrap_or(0)
    }
}

/// `index × step mod n` for a step coprime with `n`: a permutation of `0..n` that deals
/// neighbouring indices far apart (soak: whose turn it is to send, or to be replaced).
pub fn spread(index: usize, n: usize) -> usize {
    let Some(step) = [7919u128, 104_729, 1_299_709].into_iter().find(|&s| gcd(s, n as u128) == 1) else {
        return index;
    };
    ((index as u128 * step) % (n.max(1) as u128)) as usize
}

fn gcd(a: u128, b: u128) -> u128 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

pub fn room_name(room: usize) -> String {
    format!("r{room}")
}

/// When the next send is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send now, stamped with this time (the intended one in open loop).
    Now(u64),
    At(u64),
}

/// Pacing of one sender.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sched {
    /// Sends at `base + k × interval`; senders are staggered by `index / rate` so the sum is
    /// evenly spread.
    Open {
        base: u64,
        interval: f64,
        k: u64,
        next: u64,
    },
    Closed {
        window: usize,
    },
}

impl Sched {
    pub fn new(load: Load, senders: usize, index: usize, start: u64) -> Sched {
        match load {
            Load::Open { rate } => {
                let base = start + (index as f64 / rate * 1e9) as u64;
                Sched::Open { base, interval: senders as f64 / rate * 1e9, k: 0, next: base }
            }
            Load::Closed { window } => Sched::Closed { window },
        }
    }

    pub fn due(&self, now: u64) -> Due {
        match *self {
            Sched::Open { next, .. } if next > now => Due::At(next),
            Sched::Open { next, .. } => Due::Now(next),
            Sched::Closed { .. } => Due::Now(now),
        }
    }

    /// How many messages may be in flight: the window in closed loop, `open_max` in open loop.
    pub fn in_flight_limit(&self, open_max: usize) -> usize {
        match *self {
            Sched::Open { .. } => open_max,
            Sched::Closed { window } => window,
        }
    }

    pub fn advance(&mut self) {
        if let Sched::Open { base, interval, k, next } = self {
            *k += 1;
            *next = *base + (*k as f64 * *interval) as u64;
        }
    }

    /// Open loop: skips the intended sends before `t` (soak: a client replacing another one
    /// takes its slot's schedule over from when it is in, rather than catching up).
    pub fn skip_until(&mut self, t: u64) {
        if let Sched::Open { base, interval, k, next } = self {
            if *next < t && *interval > 0.0 {
                *k = ((t - *base) as f64 / *interval).ceil() as u64;
                *next = *base + (*k as f64 * *interval) as u64;
            }
        }
    }

    /// Open loop: intended sends in `[from, to)` not made yet.
    pub fn remaining(&self, from: u64, to: u64) -> u64 {
        let Sched::Open { base, interval, k, next } = *self else { return 0 };
        if interval <= 0.0 {
            return 0;
        }
        let count_before = |t: u64| -> u64 {
            if t <= base {
                0
            } else {
                ((t - base) as f64 / interval).ceil() as u64
            }
        };
        let lo = count_before(from.max(next)).max(k);
        count_before(to).saturating_sub(lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::WorkerSlot;

    #[test]
    fn open_schedule_spreads_senders_and_counts_what_is_left() {
        let a = Sched::new(Load::Open { rate: 1000.0 }, 4, 0, 1_000);
        let b = Sched::new(Load::Open { rate: 1000.0 }, 4, 1, 1_000);
        // 1000/s over 4 senders: each every 4 ms, the second 1 ms after the first.
        assert_eq!(a.due(0), Due::At(1_000));
        assert_eq!(b.due(0), Due::At(1_001_000));
        let mut a = a;
        assert_eq!(a.due(5_000), Due::Now(1_000));
        a.advance();
        assert_eq!(a.due(5_000), Due::At(4_001_000));
        // Intended sends in [0, 1 s): at 4 ms steps from 4.001 ms, 249 of them.
        assert_eq!(a.remaining(0, 1_000_000_000), 249);
        assert_eq!(Sched::new(Load::Closed { window: 2 }, 1, 0, 0).due(7), Due::Now(7));
        // A replacement takes over at 10 ms: its first send is the slot's first at or after it.
        let mut c = Sched::new(Load::Open { rate: 1000.0 }, 4, 0, 1_000);
        c.skip_until(10_000_000);
        assert_eq!(c.due(0), Due::At(12_001_000));
        c.skip_until(5_000_000);
        assert_eq!(c.due(0), Due::At(12_001_000));
    }

    #[test]
    fn spread_is_a_permutation() {
        for n in [1, 2, 7919, 10_000, 18_200] {
            let mut seen: Vec<usize> = (0..n).map(|i| spread(i, n)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n = {n}");
        }
        assert!(spread(1, 18_200).abs_diff(spread(0, 18_200)) > 1000);
    }

    #[test]
    fn fanout_plan_splits_rooms_and_publishers_over_workers() {
        let mut p = Params::new(Scenario::Fanout, "ws://127.0.0.1:1");
        p.rooms = 2;
        p.subscribers = 5;
        p.publishers = 3;
        let mut subs = [0usize; 2];
        let mut pubs = 0;
        for index in 0..2 {
            p.worker = Some(WorkerSlot { index, count: 2, source_ip: None });
            let plan = plan(&p);
            for (r, n) in plan.local_subs.iter().enumerate() {
                assert!(*n >= 2);
                subs[r] += n;
            }
            pubs += plan.local_publishers;
        }
        assert_eq!((subs, pubs), ([5, 5], 3));
    }

    #[test]
    fn fanout_plan_spreads_subscribers_over_the_urls() {
        let mut p = Params::new(Scenario::Fanout, "ws://127.0.0.1:1");
        p.urls.push("ws://127.0.0.1:2".into());
        p.rooms = 4;
        p.subscribers = 3;
        p.publishers = 2;
        // (room, node) of every subscriber, and the publishers' nodes.
        let placed = |p: &Params| {
            let plan = plan(p);
            let mut subs = Vec::new();
            let mut pubs = Vec::new();
            for (slot, role) in plan.roles.iter().enumerate() {
                match *role {
                    Role::Subscriber { room } => subs.push((room, plan.target(slot))),
                    Role::Publisher { .. } => pubs.push(plan.target(slot)),
                    _ => unreachable!(),
                }
            }
            (subs, pubs)
        };
        let (subs, pubs) = placed(&p);
        assert_eq!(pubs, [0, 0]);
        for room in 0..4 {
            let nodes: Vec<usize> = subs.iter().filter(|s| s.0 == room).map(|s| s.1).collect();
            assert_eq!(nodes, [0, 1, 0], "room {room}: dealt over both nodes");
        }
        p.spread = Spread::Rooms;
        let (subs, _) = placed(&p);
        assert!(subs.iter().all(|&(room, node)| node == room % 2), "{subs:?}");
    }

    #[test]
    fn soak_plan_keeps_rooms_and_pairs_in_one_process() {
        let mut p = Params::new(Scenario::Soak, "ws://127.0.0.1:1");
        p.connections = 103;
        p.mix = [50, 10, 40];
        p.rooms = 4;
        let (mut indices, mut kinds) = (Vec::new(), [0usize; 3]);
        for index in 0..2 {
            p.worker = Some(WorkerSlot { index, count: 2, source_ip: None });
            let plan = plan(&p);
            for (slot, role) in plan.roles.iter().enumerate() {
                let Role::Soak { kind, index: i, group } = *role else { panic!("{role:?}") };
                kinds[kind as usize] += 1;
                indices.push(i);
                match kind {
                    Kind::Native => {
                        let Role::Soak { group: back, index: other, .. } = plan.roles[group] else { panic!() };
                        assert_eq!((back, other.abs_diff(i)), (slot, 1));
                    }
                    _ => assert_eq!(group % 2, index, "room {group} belongs to process {}", group % 2),
                }
            }
        }
        indices.sort_unstable();
        assert_eq!(indices, (0..103).collect::<Vec<_>>());
        // 41 native rounds down to 40, a pair count; WebSocket takes the odd one.
        assert_eq!(kinds, [53, 10, 40]);
    }

    #[test]
    fn chat_plan_keeps_pairs_in_one_process() {
        let mut p = Params::new(Scenario::Chat, "ws://127.0.0.1:1");
        p.connections = 10;
        let mut indices = Vec::new();
        for index in 0..2 {
            p.worker = Some(WorkerSlot { index, count: 2, source_ip: None });
            let plan = plan(&p);
            assert_eq!(plan.senders, 10);
            for (slot, role) in plan.roles.iter().enumerate() {
                let Role::Chat { index, peer } = *role else { panic!("{role:?}") };
                let Role::Chat { index: other, peer: back } = plan.roles[peer] else { panic!() };
                assert_eq!((index ^ 1, back), (other, slot));
                indices.push(index);
            }
        }
        indices.sort_unstable();
        assert_eq!(indices, (0..10).collect::<Vec<_>>());
    }
}
