//! More connections than one process may open: the parent re-executes itself `--processes`
//! times. Each worker gets a share of the connections and, on a 127.0.0.0/8 target, its own
//! source address 127.0.0.(2+i), so every worker has the whole ephemeral port range.
//!
//! The parent and a worker talk in lines. Parent → worker on stdin: the [`Params`] as JSON,
//! later `GO <start_ns>`. Worker → parent on stdout: `READY <connected>` once its connections
//! are up, `TICK <json>` each second, `DRAINED` before its connections close, `REPORT <json>`
//! at the end, or `ERROR <message>`. All
//! workers start sending at the same `start_ns` on the shared monotonic clock.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use crate::clock::{now_ns, secs_to_ns, unix_ms};
use crate::error::Error;
use crate::params::{Params, WorkerSlot};
use crate::probe::ServerProbe;
use crate::report::{progress_line, Report, ServerInputs, Tick, WorkerReport};
use crate::sys;
use crate::target::Target;
use crate::worker::{Progress, Worker};

enum Line {
    Ready,
    Drained,
    Tick(Tick),
    Report(Box<WorkerReport>),
    Error(String),
    Eof,
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// Kills and reaps the workers still running (only the children this run started).
struct Procs(Vec<Proc>);

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.0 {
            if let Ok(None) = p.child.try_wait() {
                let _ = p.child.kill();
            }
            let _ = p.child.wait();
        }
    }
}

fn worker_err(index: usize, reason: impl Into<String>) -> Error {
    Error::Worker { index, reason: reason.into() }
}

/// The parent's side.
pub fn run(p: &Params) -> Result<Report, Error> {
    let targets = Target::all(p)?;
    let exe = match &p.worker_exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().map_err(|e| Error::io("finding this executable", e))?,
    };
    let k = p.processes;
    let cores = sys::available_cores();
    let threads = if p.threads == 0 { (cores / k).max(1) } else { p.threads };
    let loopback_v4 = targets.iter().all(|t| t.is_loopback() && t.addr.is_ipv4());
    let probe = ServerProbe::new(p);
    let before = probe.memory();
    let fds_before = if p.scenario == crate::params::Scenario::Soak { probe.open_fds() } else { None };
    let started = unix_ms();

    let (tx, rx) = mpsc::channel::<(usize, Line)>();
    let mut procs = Procs(Vec::with_capacity(k));
    for i in 0..k {
        let mut wp = p.clone();
        wp.threads = threads;
        wp.progress = false;
        wp.worker_exe = None;
        // Each worker stops at its share of --total.
        wp.total = p.total.map(|t| (t / k as u64 + u64::from((i as u64) < t % k as u64)).max(1));
        wp.worker = Some(WorkerSlot {
            index: i,
            count: k,
            source_ip: loopback_v4.then(|| Ipv4Addr::new(127, 0, 0, (2 + i) as u8)),
        });
        let json = serde_json::to_string(&wp).map_err(|e| worker_err(i, e.to_string()))?;
        let mut child = Command::new(&exe)
            .arg("--worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::io(format!("starting worker {i} ({})", exe.display()), e))?;
        let mut stdin = child.stdin.take();
        if let Some(s) = stdin.as_mut() {
            writeln!(s, "{json}").map_err(|e| worker_err(i, format!("writing parameters: {e}")))?;
        }
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || read_lines(i, out, &tx));
        }
        procs.0.push(Proc { child, stdin });
    }
    drop(tx);

    let setup_deadline = now_ns() + secs_to_ns(p.setup_timeout_s + 30.0);
    let mut ready = 0;
    while ready < k {
        match next(&rx, setup_deadline)? {
            (_, Line::Ready) => ready += 1,
            (i, Line::Error(e)) => return Err(worker_err(i, e)),
            (i, Line::Eof) => return Err(worker_err(i, "exited during set-up")),
            _ => {}
        }
        if p.progress {
            eprintln!("[set-up] {ready}/{k} worker processes ready");
        }
    }
    let after_setup = probe.memory();
    let start = now_ns() + 200_000_000;
    for (i, proc) in procs.0.iter_mut().enumerate() {
        if let Some(s) = proc.stdin.as_mut() {
            writeln!(s, "GO {start}").and_then(|_| s.flush()).map_err(|e| worker_err(i, format!("starting: {e}")))?;
        }
    }
    let mut sampler = probe.cpu_sampler(start + secs_to_ns(p.warmup_s));
    let (mut cpu, mut at_end, mut drained) = (None, None, 0);
    let run_deadline =
        start + secs_to_ns(p.warmup_s + p.duration_s + p.drain_s.max(p.connect_timeout_s + 1.0) + p.drain_s + 30.0);
    let mut reports: Vec<Option<WorkerReport>> = vec![None; k];
    let mut ticks: Vec<Tick> = Vec::new();
    while reports.iter().any(Option::is_none) {
        match next(&rx, run_deadline)? {
            (_, Line::Drained) => {
                drained += 1;
                // The server's figures once every worker is done, before connections close.
                if drained == k {
                    cpu = sampler.take().and_then(|s| s.finish());
                    at_end = Some(probe.memory());
                }
            }
            (i, Line::Report(r)) => reports[i] = Some(*r),
            (i, Line::Error(e)) => return Err(worker_err(i, e)),
            (i, Line::Eof) if reports[i].is_none() => return Err(worker_err(i, "exited without a report")),
            (_, Line::Tick(t)) if p.progress => {
                let idx = t.index;
                ticks.push(t);
                if ticks.iter().filter(|x| x.index == idx).count() == k {
                    let sum = ticks.iter().filter(|x| x.index == idx).fold(Tick::default(), |a, x| Tick {
                        index: idx,
                        t_s: a.t_s.max(x.t_s),
                        dur_s: a.dur_s.max(x.dur_s),
                        sent: a.sent + x.sent,
                        received: a.received + x.received,
                        failed: a.failed + x.failed,
                        errors: a.errors + x.errors,
                        p99_us: a.p99_us.max(x.p99_us),
                        alive: a.alive + x.alive,
                    });
                    ticks.retain(|x| x.index != idx);
                    eprintln!("{}", progress_line(p, &sum));
                }
            }
            _ => {}
        }
    }
    let cpu = cpu.or_else(|| sampler.and_then(|s| s.finish()));
    let at_end = at_end.unwrap_or_else(|| probe.memory());
    drop(procs);
    let reports: Vec<WorkerReport> = reports.into_iter().flatten().collect();
    let server = probe.active().then(|| ServerInputs { pids: probe.pids().to_vec(), before, after_setup, at_end, cpu });
    let mut report = Report::build(p, &reports, server, started, cores)?;
    report.check_leftover(&probe, crate::probe::LEFTOVER_WAIT, fds_before);
    Ok(report)
}

fn next(rx: &Receiver<(usize, Line)>, deadline: u64) -> Result<(usize, Line), Error> {
    let wait = Duration::from_nanos(deadline.saturating_sub(now_ns()));
    rx.recv_timeout(wait).map_err(|e| match e {
        RecvTimeoutError::Timeout => {
            Error::Worker { index: usize::MAX, reason: "workers did not answer in time".into() }
        }
        RecvTimeoutError::Disconnected => Error::Worker { index: usize::MAX, reason: "every worker exited".into() },
    })
}

fn read_lines(i: usize, out: impl std::io::Read, tx: &mpsc::Sender<(usize, Line)>) {
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let (tag, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let msg = match tag {
            "READY" => Line::Ready,
            "DRAINED" => Line::Drained,
            "TICK" => match serde_json::from_str(rest) {
                Ok(t) => Line::Tick(t),
                Err(_) => continue,
            },
            "REPORT" => match serde_json::from_str(rest) {
                Ok(r) => Line::Report(Box::new(r)),
                Err(e) => Line::Error(format!("unreadable report: {e}")),
            },
            "ERROR" => Line::Error(rest.to_string()),
            _ => continue,
        };
        if tx.send((i, msg)).is_err() {
            return;
        }
    }
    let _ = tx.send((i, Line::Eof));
}

/// The worker's side (`imks-loadgen --worker`): parameters from stdin, lines to stdout.
pub fn worker_main() -> Result<(), Error> {
    let mut input = std::io::stdin().lock().lines();
    let mut line = || -> Result<String, Error> {
        match input.next() {
            Some(Ok(l)) => Ok(l),
            Some(Err(e)) => Err(Error::io("reading stdin", e)),
            None => Err(Error::Config("the parent closed stdin".into())),
        }
    };
    let p: Params = serde_json::from_str(&line()?).map_err(|e| Error::Config(format!("worker parameters: {e}")))?;
    p.validate()?;
    let out = |s: String| {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{s}");
        let _ = o.flush();
    };
    let worker = Worker::setup(&p, false)?;
    out(format!("READY {}", worker.established()));
    let go = line()?;
    let start: u64 = go
        .strip_prefix("GO ")
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::Config(format!("expected `GO <ns>`, got {go:?}")))?;
    let report = worker.run(start, &mut |e| match e {
        Progress::Tick(t) => {
            if let Ok(j) = serde_json::to_string(t) {
                out(format!("TICK {j}"));
            }
        }
        Progress::Drained => out("DRAINED".into()),
    })?;
    let j = serde_json::to_string(&report).map_err(|e| Error::Config(format!("report: {e}")))?;
    out(format!("REPORT {j}"));
    Ok(())
}
