//! What a run does: the command line ([`Cli`], clap's shape, every flag with its default) and
//! the checked parameters the code uses ([`Params`]). [`Params::validate`] is the one place
//! that enforces the bounds: every run ends by itself and opens a bounded number of connections.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Longest measurement, in seconds.
pub const MAX_DURATION_S: f64 = 600.0;
/// Most connections in one run, over every worker process.
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// Most worker processes: each takes its own source address 127.0.0.(2+i).
pub const MAX_PROCESSES: usize = 250;
/// Most server addresses (`--url`) and server processes (`--server-pid`) in one run.
pub const MAX_URLS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Raw WebSocket round trip to an echo endpoint (`/ws-echo`).
    Echo,
    /// Socket.IO `echo-ack` emit with an ack, round trip.
    Ack,
    /// R rooms × S subscribers, P publishers emitting `publish`; the server emits `msg` to the room.
    Fanout,
    /// A storm of handshakes: connect, record time-to-connected, close.
    Connect,
    /// Hold N connections for the duration.
    Idle,
    /// Point-to-point chat with `sent` and `delivered` acks over imks's native protocol (`/ws`):
    /// connections in pairs, each sending to the other's user.
    Chat,
    /// Hold N connections of three kinds (Socket.IO over WebSocket, Socket.IO over long-polling,
    /// native `/ws`) with traffic on all of them (room broadcasts, acks, direct messages) and
    /// churn, and account for every message; with --health-url, check that nothing is left
    /// on the server once every client left.
    Soak,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Raw WebSocket messages.
    Ws,
    /// Socket.IO v5 over Engine.IO v4, WebSocket transport only.
    Sio,
}

/// How fan-out places subscribers when there are several `--url`s (the nodes of a cluster).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// Every room has members on every node: a room's subscribers are dealt over the URLs in
    /// turn.
    #[default]
    Members,
    /// Each room lives on one node: room `r`'s subscribers all connect to URL `r mod N`, so
    /// with N nodes each node has members of 1/N of the rooms.
    Rooms,
}

/// How sends are paced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Load {
    /// Messages per second over all sending connections, at fixed intended times; latency is
    /// measured from the intended time, so a stall cannot hide by delaying the next send.
    Open { rate: f64 },
    /// `window` requests in flight per connection (per publisher in fan-out), as fast as the
    /// server answers.
    Closed { window: usize },
}

/// Which share of the run a worker process takes (set by the parent, never on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSlot {
    pub index: usize,
    pub count: usize,
    /// Source address to bind before connecting, so K workers get K × the ephemeral ports.
    pub source_ip: Option<Ipv4Addr>,
}

/// The checked parameters of one run. Build with [`Params::new`], adjust fields, and hand to
/// [`crate::run`], which validates them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub scenario: Scenario,
    pub protocol: Protocol,
    /// `ws://host:port[/path]`, one per server (the nodes of a cluster), never empty; the path
    /// defaults to `/ws-echo` (ws), `/ws-fanout` (ws fan-out), `/ws` (chat) or `/socket.io/`
    /// (sio). Connections are dealt over them in turn (see [`crate::plan`]); fan-out's
    /// publishers all connect to the first, and its subscribers as [`Params::spread`] says.
    pub urls: Vec<String>,
    /// Fan-out over several URLs: where the subscribers go.
    #[serde(default)]
    pub spread: Spread,
    /// Connections (echo, ack, chat, idle) or concurrent handshakes (connect). Fan-out derives
    /// its own: rooms × subscribers + publishers.
    pub connections: usize,
    pub rooms: usize,
    pub subscribers: usize,
    pub publishers: usize,
    pub load: Load,
    /// Size in bytes of each message's payload (the JSON object, the binary body, or a chat
    /// message's `content`).
    pub size: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Longest wait after the measurement for answers still in flight.
    pub drain_s: f64,
    /// End the measurement after this many measured sends (publishes, requests, handshakes).
    pub total: Option<u64>,
    /// Runtime threads per process; 0 = every core this process may run on.
    pub threads: usize,
    pub processes: usize,
    /// The server's processes (with a cluster, every node and the broker): their CPU and RSS
    /// are summed.
    pub server_pids: Vec<u32>,
    pub health_url: Option<String>,
    /// Handshakes in progress at once while connections are set up.
    pub connect_concurrency: usize,
    pub connect_timeout_s: f64,
    /// Longest time for setting every connection up.
    pub setup_timeout_s: f64,
    /// Open loop: most unanswered requests per connection before sends wait (their intended
    /// times keep running, so the wait shows as latency).
    pub max_inflight: usize,
    /// Raw WebSocket payloads as JSON text instead of binary.
    pub ws_text: bool,
    /// Largest incoming message accepted, in bytes.
    pub max_message: usize,
    /// Open loop: least time between two wake-ups of the send timer, in µs. Sends due in
    /// between go out together, late by at most this (counted in their latency); fewer
    /// wake-ups cost the generator less CPU at high rates. Default 50.
    pub timer_slack_us: u64,
    /// Token presented on every upgrade as `Authorization: Bearer`; `{i}` is replaced by the
    /// connection's index (see [`crate::token`]). Written as `<redacted>` in reports.
    #[serde(default)]
    pub token: Option<String>,
    /// HS256 secret to mint a JWT per connection with (`sub` = `lg-<i>`). Written as
    /// `<redacted>` in reports.
    #[serde(default)]
    pub jwt_secret: Option<String>,
    /// Print a progress line every second on stderr.
    pub progress: bool,
    /// The binary to start worker processes from (default: this executable).
    #[serde(skip)]
    pub worker_exe: Option<PathBuf>,
    /// Soak: the weights of Socket.IO over WebSocket, Socket.IO over long-polling and native
    /// `/ws` clients among `connections`.
    #[serde(default = "default_mix")]
    pub mix: [u32; 3],
    /// Soak: clients that leave each second (cleanly) and are replaced by new ones.
    #[serde(default)]
    pub churn: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerSlot>,
}

fn default_mix() -> [u32; 3] {
    DEFAULT_MIX
}

/// Soak's default mix: 60% Socket.IO over WebSocket, 4% over long-polling (each holds two
/// connections on the server), 36% native.
pub const DEFAULT_MIX: [u32; 3] = [60, 4, 36];

/// Soak: how many clients of each kind (Socket.IO over WebSocket, over long-polling, native) a
/// run of `n` clients with weights `mix` holds. Native clients come in pairs, so their count is
/// even; Socket.IO over WebSocket takes what rounding leaves.
pub fn soak_split(n: usize, mix: [u32; 3]) -> [usize; 3] {
    let sum: u64 = mix.iter().map(|&w| u64::from(w)).sum::<u64>().max(1);
    let part = |w: u32| (n as u64 * u64::from(w) / sum) as usize;
    let polling = part(mix[1]);
    let native = part(mix[2]) & !1;
    [n - polling - native, polling, native]
}

impl Params {
    /// Defaults for `scenario` against `url`: the protocol it is defined on, 100 connections,
    /// closed loop with a window of 1, 64-byte payloads, 10 s after 1 s of warm-up.
    pub fn new(scenario: Scenario, url: &str) -> Params {
        Params {
            scenario,
            protocol: match scenario {
                Scenario::Echo | Scenario::Chat | Scenario::Soak => Protocol::Ws,
                _ => Protocol::Sio,
            },
            urls: vec![url.to_string()],
            spread: Spread::Members,
            connections: 100,
            rooms: 1,
            subscribers: 100,
            publishers: 1,
            load: Load::Closed { window: 1 },
            size: 64,
            duration_s: 10.0,
            warmup_s: 1.0,
            drain_s: 3.0,
            total: None,
            threads: 0,
            processes: 1,
            server_pids: Vec::new(),
            health_url: None,
            connect_concurrency: 256,
            connect_timeout_s: 10.0,
            setup_timeout_s: 120.0,
            max_inflight: 1000,
            ws_text: false,
            max_message: 16 << 20,
            timer_slack_us: 50,
            token: None,
            jwt_secret: None,
            progress: false,
            worker_exe: None,
            mix: DEFAULT_MIX,
            churn: 0,
            worker: None,
        }
    }

    /// The first URL: the only one with a single server, fan-out's publishers' with several.
    pub fn url(&self) -> &str {
        self.urls.first().map(String::as_str).unwrap_or_default()
    }

    /// Connections the whole run opens at once (handshakes in flight for `connect`).
    pub fn total_connections(&self) -> usize {
        match self.scenario {
            Scenario::Fanout => self.rooms.saturating_mul(self.subscribers).saturating_add(self.publishers),
            _ => self.connections,
        }
    }

    /// Whether every connection presents the same token, and is therefore the same user. Here
    /// rather than in [`crate::token`], which builds on these parameters: validation needs it.
    pub fn shares_token(&self) -> bool {
        self.jwt_secret.is_none() && self.token.as_ref().is_some_and(|t| !t.contains("{i}"))
    }

    /// Checks every bound; the message names the flag.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        match (self.scenario, self.protocol) {
            (Scenario::Echo, Protocol::Sio) => {
                return bad("--scenario echo is a raw WebSocket round trip; use `ack` for Socket.IO".into())
            }
            (Scenario::Ack, Protocol::Ws) => {
                return bad("--scenario ack is a Socket.IO emit with ack; use `echo` for raw WebSocket".into())
            }
            (Scenario::Chat, Protocol::Sio) => {
                return bad("--scenario chat speaks imks's native protocol over raw WebSocket (--protocol ws)".into())
            }
            _ => {}
        }
        if self.urls.is_empty() || self.urls.len() > MAX_URLS {
            return bad(format!("give between 1 and {MAX_URLS} --url"));
        }
        if self.server_pids.len() > MAX_URLS {
            return bad(format!("give at most {MAX_URLS} --server-pid"));
        }
        if !(self.duration_s > 0.0 && self.duration_s <= MAX_DURATION_S) {
            return bad(format!("--duration must be in (0, {MAX_DURATION_S}] seconds"));
        }
        for (name, v) in [("--warmup", self.warmup_s), ("--drain", self.drain_s)] {
            if !(0.0..=60.0).contains(&v) {
                return bad(format!("{name} must be in [0, 60] seconds"));
            }
        }
        for (name, v) in [("--connect-timeout", self.connect_timeout_s), ("--setup-timeout", self.setup_timeout_s)] {
            if !(v > 0.0 && v <= 600.0) {
                return bad(format!("{name} must be in (0, 600] seconds"));
            }
        }
        if self.scenario == Scenario::Fanout {
            if self.rooms == 0 || self.subscribers == 0 || self.publishers == 0 {
                return bad("--rooms, --subscribers and --publishers must be at least 1".into());
            }
            if self.processes > 1 && self.subscribers < self.processes {
                return bad("fan-out over several processes needs --subscribers >= --processes".into());
            }
        }
        if self.scenario == Scenario::Chat {
            if self.connections < 2 || self.connections % 2 != 0 {
                return bad("chat pairs its connections: --connections must be even and at least 2".into());
            }
            if self.processes > self.connections / 2 {
                return bad("chat keeps each pair in one process: --processes must be at most --connections / 2".into());
            }
            if self.processes > 1 && self.shares_token() {
                return bad("a --token without {i} makes every connection one user, whose deliveries can only be \
                            counted in one process: use --processes 1"
                    .into());
            }
        }
        if self.scenario == Scenario::Soak {
            let [ws, polling, native] = soak_split(self.connections, self.mix);
            if self.mix.iter().all(|&w| w == 0) {
                return bad("--mix takes three weights, WS,POLLING,NATIVE, not all zero".into());
            }
            if !matches!(self.load, Load::Open { .. }) {
                return bad("soak is open loop: give --rate (messages per second over all clients)".into());
            }
            if ws + polling > 0 && self.rooms < self.processes {
                return bad("soak keeps each room in one process: --rooms must be at least --processes".into());
            }
            if native > 0 && self.processes > native / 2 {
                return bad("soak keeps each native pair in one process: too few native clients for --processes".into());
            }
            if self.urls.len() != 1 {
                return bad("soak runs against one node: give one --url".into());
            }
            if self.token.is_some() || self.jwt_secret.is_some() {
                return bad("soak's native clients are anonymous users: drop --token and --jwt-secret".into());
            }
            if self.churn > self.connections {
                return bad("--churn must be at most --connections (clients replaced per second)".into());
            }
        }
        if self.token.is_some() && self.jwt_secret.is_some() {
            return bad("--token and --jwt-secret exclude each other".into());
        }
        if let Some(t) = &self.token {
            if t.is_empty() || t.len() > 8192 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return bad("--token must be 1 to 8192 visible ASCII characters".into());
            }
        }
        if self.jwt_secret.as_ref().is_some_and(String::is_empty) {
            return bad("--jwt-secret must not be empty".into());
        }
        let n = self.total_connections();
        if n == 0 || n > MAX_CONNECTIONS {
            return bad(format!("the run must open between 1 and {MAX_CONNECTIONS} connections (it asks for {n})"));
        }
        match self.load {
            Load::Open { rate } if !(rate.is_finite() && rate > 0.0 && rate <= 1e8) => {
                return bad("--rate must be in (0, 1e8] per second".into())
            }
            Load::Closed { window } if !(1..=100_000).contains(&window) => {
                return bad("--window must be in [1, 100000]".into())
            }
            _ => {}
        }
        if !(1..=MAX_PROCESSES).contains(&self.processes) {
            return bad(format!("--processes must be in [1, {MAX_PROCESSES}]"));
        }
        if self.processes > n {
            return bad("--processes must not exceed the number of connections".into());
        }
        if self.threads > 1024 {
            return bad("--threads must be at most 1024".into());
        }
        if self.size > self.max_message || self.size > 64 << 20 {
            return bad("--size must be at most 64 MiB and at most --max-message".into());
        }
        if self.connect_concurrency == 0 || self.max_inflight == 0 {
            return bad("--connect-concurrency and --max-inflight must be at least 1".into());
        }
        if self.timer_slack_us > 10_000 {
            return bad("--timer-slack-us must be at most 10000".into());
        }
        if self.total == Some(0) {
            return bad("--total must be at least 1".into());
        }
        if let Some(u) = &self.health_url {
            if !u.starts_with("http://") {
                return bad("--health-url must be an http:// URL".into());
            }
        }
        Ok(())
    }
}

/// The command line: `imks-loadgen <SCENARIO> [OPTIONS]`.
#[derive(Debug, Parser)]
#[command(name = "imks-loadgen", version, about = "Load generator for imks and any WebSocket / Socket.IO v5 server")]
pub struct Cli {
    /// What to measure.
    #[arg(value_enum, required_unless_present = "worker")]
    pub scenario: Option<Scenario>,

    /// Server address, `ws://HOST:PORT[/PATH]`. Repeat it for the nodes of a cluster:
    /// connections are dealt over them in turn, fan-out's publishers all go to the first.
    #[arg(long, default_value = "ws://127.0.0.1:3000")]
    pub url: Vec<String>,

    /// Fan-out with several --url: `members` deals every room's subscribers over the nodes,
    /// `rooms` puts all of room r's on node r mod N.
    #[arg(long, value_enum, default_value_t = Spread::Members)]
    pub spread: Spread,

    /// Wire protocol. Default: ws for echo and chat, sio otherwise.
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,

    /// Connections (echo, ack, chat, idle) or concurrent handshakes (connect). Default 100.
    #[arg(long, short = 'c')]
    pub connections: Option<usize>,

    /// Fan-out: rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,

    /// Fan-out: subscribers per room.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,

    /// Fan-out: publisher connections (they join no room).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,

    /// Open loop: messages (publishes, requests, handshakes) per second over all connections.
    #[arg(long, conflicts_with = "window")]
    pub rate: Option<f64>,

    /// Closed loop: requests in flight per connection (per publisher in fan-out). Default 1.
    #[arg(long)]
    pub window: Option<usize>,

    /// Payload size in bytes (chat: the message's `content`).
    #[arg(long, default_value_t = 64)]
    pub size: usize,

    /// Measurement length in seconds (at most 600).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,

    /// Warm-up before the measurement, in seconds (sent but not counted).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,

    /// Longest wait for answers still in flight after the measurement, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,

    /// Stop after this many measured sends, even before --duration.
    #[arg(long)]
    pub total: Option<u64>,

    /// Runtime threads per process [default: the cores this process may use].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub threads: usize,

    /// Worker processes, for more connections than one process may open; on a 127.0.0.0/8
    /// target each binds its own source address 127.0.0.(2+i).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,

    /// Server process to read CPU time and RSS from (/proc/PID). Repeat it for every process
    /// the work runs in (the nodes of a cluster and their broker): their figures are summed.
    #[arg(long)]
    pub server_pid: Vec<u32>,

    /// Server health URL (`http://HOST:PORT/health`) to read RSS and connection counts from.
    #[arg(long)]
    pub health_url: Option<String>,

    /// Handshakes in progress at once during set-up.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Per-connection handshake timeout, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,

    /// Longest time to set every connection up, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub setup_timeout: f64,

    /// Open loop: most unanswered requests per connection before sends wait.
    #[arg(long, default_value_t = 1000)]
    pub max_inflight: usize,

    /// Raw WebSocket: send JSON text instead of binary payloads.
    #[arg(long)]
    pub ws_text: bool,

    /// Largest incoming message accepted, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_message: usize,

    /// Open loop: least time between two wake-ups of the send timer, in µs; sends due in between
    /// go out together, late by at most this (which counts as latency). 0: every deadline on
    /// its own, which costs a thread wake-up per send.
    #[arg(long, default_value_t = 50)]
    pub timer_slack_us: u64,

    /// Token sent on every upgrade as `Authorization: Bearer`; `{i}` becomes the connection's
    /// index (for a static token list t-0, t-1, ...). Without `{i}` every connection is one user.
    #[arg(long, conflicts_with = "jwt_secret")]
    pub token: Option<String>,

    /// Mint an HS256 JWT per connection with this secret, `sub` = `lg-<i>` (for a server in
    /// `jwt` auth mode with the same secret).
    #[arg(long)]
    pub jwt_secret: Option<String>,

    /// Write the JSON report here (`-` for stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write an SVG plot of throughput and p99 latency over time here.
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// No progress line, even on a terminal.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Exit 0 even when messages were lost or delivered twice, or connections failed (the
    /// report still says so); without it such a run exits 3.
    #[arg(long)]
    pub allow_loss: bool,

    /// Soak: weights of Socket.IO over WebSocket, Socket.IO over long-polling and native `/ws`
    /// clients, `WS,POLLING,NATIVE`.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_MIX)]
    pub mix: Vec<u32>,

    /// Soak: clients that leave (cleanly) each second and are replaced by new ones.
    #[arg(long, default_value_t = 0)]
    pub churn: usize,

    /// Internal: run as a worker process (parameters on stdin).
    #[arg(long, hide = true)]
    pub worker: bool,
}

impl Cli {
    /// The parameters the command line asks for (validated later, by [`crate::run`]).
    pub fn params(&self, scenario: Scenario) -> Params {
        let mut p = Params::new(scenario, "");
        p.urls = self.url.clone();
        p.spread = self.spread;
        if let Some(proto) = self.protocol {
            p.protocol = proto;
        }
        if let Some(c) = self.connections {
            p.connections = c;
        }
        p.rooms = self.rooms;
        p.subscribers = self.subscribers;
        p.publishers = self.publishers;
        p.load = match (self.rate, self.window) {
            (Some(rate), _) => Load::Open { rate },
            (None, w) => Load::Closed { window: w.unwrap_or(1) },
        };
        p.size = self.size;
        p.duration_s = self.duration;
        p.warmup_s = self.warmup;
        p.drain_s = self.drain;
        p.total = self.total;
        p.threads = self.threads;
        p.processes = self.processes;
        p.server_pids = self.server_pid.clone();
        p.health_url = self.health_url.clone();
        p.connect_concurrency = self.connect_concurrency;
        p.connect_timeout_s = self.connect_timeout;
        p.setup_timeout_s = self.setup_timeout;
        p.max_inflight = self.max_inflight;
        p.ws_text = self.ws_text;
        p.max_message = self.max_message;
        p.timer_slack_us = self.timer_slack_us;
        p.token = self.token.clone();
        p.jwt_secret = self.jwt_secret.clone();
        // Anything but three weights is refused by validation, as all zeros.
        p.mix = match self.mix[..] {
            [ws, polling, native] => [ws, polling, native],
            _ => [0; 3],
        };
        p.churn = self.churn;
        p
    }
}

/// `(first, count)` of the `index`-th of `parts` near-equal shares of `n` items.
pub fn share(n: usize, index: usize, parts: usize) -> (usize, usize) {
    let base = n / parts;
    let extra = n % parts;
    let first = index * base + index.min(extra);
    (first, base + usize::from(index < extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once() {
        for n in [0, 1, 7, 100] {
            for parts in 1..6 {
                let mut next = 0;
                for i in 0..parts {
                    let (first, count) = share(n, i, parts);
                    assert_eq!(first, next);
                    next += count;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn bounds_are_enforced() {
        let ok = Params::new(Scenario::Ack, "ws://127.0.0.1:1");
        assert!(ok.validate().is_ok());
        let mut p = ok.clone();
        p.duration_s = 601.0;
        assert!(p.validate().is_err());
        let mut p = ok.clone();
        p.connections = MAX_CONNECTIONS + 1;
        assert!(p.validate().is_err());
        let mut chat = Params::new(Scenario::Chat, "ws://127.0.0.1:1");
        assert!(chat.validate().is_ok());
        chat.connections = 3;
        assert!(chat.validate().is_err());
        chat.connections = 4;
        chat.protocol = Protocol::Sio;
        assert!(chat.validate().is_err());
        chat.protocol = Protocol::Ws;
        chat.processes = 2;
        chat.token = Some("one".into());
        assert!(chat.validate().is_err());
        chat.token = Some("t-{i}".into());
        assert!(chat.validate().is_ok());
        chat.token = Some("bad token".into());
        assert!(chat.validate().is_err());
        chat.token = Some("t".into());
        chat.jwt_secret = Some("s".into());
        chat.processes = 1;
        assert!(chat.validate().is_err());
        let mut p = ok.clone();
        p.protocol = Protocol::Ws;
        assert!(p.validate().is_err());
        let mut p = ok;
        p.load = Load::Open { rate: f64::NAN };
        assert!(p.validate().is_err());
    }
}
