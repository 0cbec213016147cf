//! imks-loadgen: a load generator for imks and any other WebSocket or Socket.IO v5 server.
//!
//! Modules, lowest first: each uses only modules listed before it, so dependencies point down
//! and there is no cycle (`tests/module_order.rs` checks it).
//! - [`clock`]: the monotonic clock and the precise timer for open-loop sends.
//! - [`error`]: the errors that end a run; names no other module.
//! - [`stats`]: tallies, sharded counters and hdrhistograms.
//! - [`proto`]: the pure wire codecs (WebSocket, Engine.IO / Socket.IO, imks's native JSON,
//!   message stamps).
//! - [`params`]: the command line and the checked, bounded parameters of a run (token settings
//!   as plain data).
//! - [`token`]: the token each connection presents on its upgrade (`--token`, `--jwt-secret`).
//! - [`target`]: the addresses a run connects to (one per node of a cluster).
//! - [`sys`]: this process's CPU, a server's CPU and RSS, its health JSON, limits.
//! - [`plan`]: what a run decides before connecting: who each connection is, this process's
//!   share, pacing.
//! - [`shared`]: the state a process's connections share: phase, counters, timer, feedback.
//! - [`conn`]: one connection on tokio: connect, handshakes, the readiness-driven loop.
//! - [`longpoll`]: one Socket.IO client over Engine.IO long-polling: two keep-alive HTTP
//!   connections, the parked `GET` and the `POST`s, driving the same behaviors.
//! - [`scenario`]: setting a connection up, and the echo / ack / fan-out / chat / connect /
//!   idle / soak behaviors.
//! - [`probe`]: the server's CPU and memory over a run.
//! - [`report`]: worker reports, the merged report, its text form and the progress line.
//! - [`worker`]: one process's run: set-up, warm-up, measurement, drain.
//! - [`plot`]: the SVG of a report.
//! - [`multiproc`]: several worker processes for more connections than one may open.
//! - this root: [`run`], which picks one process or several.

pub mod clock;
pub mod conn;
pub mod error;
pub mod longpoll;
pub mod multiproc;
pub mod params;
pub mod plan;
pub mod plot;
pub mod probe;
pub mod proto;
pub mod report;
pub mod scenario;
pub mod shared;
pub mod stats;
pub mod sys;
pub mod target;
pub mod token;
pub mod worker;

pub use error::Error;
pub use params::{Load, Params, Protocol, Scenario};
pub use report::{progress_line, Report};

use crate::clock::{now_ns, secs_to_ns, unix_ms};
use crate::probe::{Memory, ServerProbe};
use crate::report::ServerInputs;
use crate::worker::{Progress, Worker};

/// Runs `p` to the end and returns its report. Blocks; builds its own runtime (and worker
/// processes when `p.processes > 1`).
pub fn run(p: &Params) -> Result<Report, Error> {
    p.validate()?;
    if p.processes > 1 && p.worker.is_none() {
        return multiproc::run(p);
    }
    let cores = sys::available_cores();
    let probe = ServerProbe::new(p);
    let before = probe.memory();
    let fds_before = if p.scenario == Scenario::Soak { probe.open_fds() } else { None };
    let started = unix_ms();
    let worker = Worker::setup(p, p.progress)?;
    let after_setup = probe.memory();
    let start = now_ns() + 100_000_000;
    let mut sampler = probe.cpu_sampler(start + secs_to_ns(p.warmup_s));
    if p.progress && p.warmup_s > 0.0 {
        eprintln!("[warm-up] {} s", p.warmup_s);
    }
    let (mut cpu, mut at_end) = (None, Memory::default());
    let report = worker.run(start, &mut |e| match e {
        Progress::Tick(t) if p.progress => eprintln!("{}", progress_line(p, t)),
        Progress::Tick(_) => {}
        // The server's figures before the connections close, so teardown does not count.
        Progress::Drained => {
            cpu = sampler.take().and_then(|s| s.finish());
            at_end = probe.memory();
        }
    })?;
    let server = probe.active().then(|| ServerInputs { pids: probe.pids().to_vec(), before, after_setup, at_end, cpu });
    let mut report = Report::build(p, &[report], server, started, cores)?;
    report.check_leftover(&probe, crate::probe::LEFTOVER_WAIT, fds_before);
    Ok(report)
}
