//! One process's run, in two steps so that several processes can start together: [`Worker::setup`]
//! opens every connection (and waits for all of them), [`Worker::run`] then sends from a common
//! start time, cuts the per-second series, drains, stops and reports.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::clock::{now_ns, secs_to_ns, Timer};
use crate::error::Error;
use crate::params::{share, Params, Scenario};
use crate::plan::{plan, Role};
use crate::report::{Tick, WorkerChat, WorkerReport, WorkerSoak, WorkerTarget};
use crate::scenario::{self, conn_task, Outcome};
use crate::shared::{Run, DRAIN, STOP};
use crate::stats::{new_hist, to_raw, Ack};
use crate::sys;
use crate::target::Target;

/// File descriptors kept free for everything that is not a connection.
const SPARE_FDS: u64 = 64;
/// Fan-out over several processes cannot know when every delivery is in; it stops draining
/// after this long without a new one.
const QUIET_NS: u64 = 500_000_000;

/// What [`Worker::run`] reports while it runs.
pub enum Progress<'a> {
    /// A second of the measurement (or the drain) ended.
    Tick(&'a Tick),
    /// The drain is over; connections close next.
    Drained,
}

pub struct Worker {
    rt: Runtime,
    run: Arc<Run>,
    tasks: Vec<JoinHandle<Outcome>>,
    _timer: Timer,
    threads: usize,
}

async fn sleep_until_ns(t: u64) {
    let now = now_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

impl Worker {
    /// Opens this process's connections; returns once all are up or failed, or the set-up
    /// timeout passed. `progress` prints a line a second meanwhile.
    pub fn setup(p: &Params, progress: bool) -> Result<Worker, Error> {
        let targets = Target::all(p)?;
        let threads = if p.threads == 0 { sys::available_cores() } else { p.threads };
        let plan = plan(p);
        let (wi, wk) = p.worker.map(|w| (w.index, w.count)).unwrap_or((0, 1));
        let fds = match p.scenario {
            // A handshake in flight and one closing in the background each hold a descriptor.
            Scenario::Connect => 2 * share(p.connections, wi, wk).1,
            // A long-polling client holds two.
            Scenario::Soak => plan
                .roles
                .iter()
                .map(|r| match r {
                    Role::Soak { kind, .. } => kind.fds(),
                    _ => 1,
                })
                .sum(),
            _ => plan.roles.len(),
        } as u64;
        let limit = sys::raise_nofile();
        if fds + SPARE_FDS > limit {
            let per = limit.saturating_sub(SPARE_FDS).max(1);
            let total = (p.total_connections() as u64 * if p.scenario == Scenario::Connect { 2 } else { 1 })
                .max(fds * wk as u64);
            return Err(Error::Config(format!(
                "{fds} connections in one process exceed its open-file limit of {limit}; use --processes {} or more",
                total.div_ceil(per)
            )));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .thread_name("loadgen")
            .build()
            .map_err(Error::Runtime)?;
        let timer = Timer::start(p.timer_slack_us * 1000).map_err(|e| Error::io("starting the timer thread", e))?;
        let run = Arc::new(Run::new(p, targets, plan, timer.handle(), threads * 4)?);
        let sem = Arc::new(Semaphore::new(p.connect_concurrency));
        let tasks: Vec<JoinHandle<Outcome>> = run
            .plan
            .roles
            .iter()
            .enumerate()
            .map(|(slot, &role)| rt.spawn(conn_task(run.clone(), sem.clone(), slot, role)))
            .collect();
        let n = tasks.len();
        let deadline = now_ns() + secs_to_ns(p.setup_timeout_s);
        rt.block_on(async {
            let mut next_print = now_ns() + 1_000_000_000;
            loop {
                let ok = run.setup_ok.load(Ordering::Relaxed);
                let failed = run.setup_failed.load(Ordering::Relaxed);
                let now = now_ns();
                if ok + failed >= n || now >= deadline {
                    break;
                }
                if progress && now >= next_print {
                    eprintln!("[set-up] {ok}/{n} connected, {failed} failed");
                    next_print += 1_000_000_000;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let ok = run.setup_ok.load(Ordering::Relaxed);
        if n > 0 && ok == 0 {
            let errors: Vec<String> = run.stats.errors().iter().map(|(k, v)| format!("{k} ×{v}")).collect();
            let to: Vec<String> = run.targets.iter().map(|t| t.addr.to_string()).collect();
            return Err(Error::NoConnections(format!("{} to {}: {}", n, to.join(", "), errors.join(", "))));
        }
        Ok(Worker { rt, run, tasks, _timer: timer, threads })
    }

    /// Connections set up so far.
    pub fn established(&self) -> usize {
        self.run.setup_ok.load(Ordering::Relaxed)
    }

    /// Runs from `start` (nanoseconds on [`now_ns`], the same in every process): warm-up, the
    /// measurement, the drain. `on_event` sees each second as it ends, then the end of the
    /// drain, before any connection closes (so the server's figures can be read without the
    /// cost of tearing the connections down).
    pub fn run(self, start: u64, on_event: &mut dyn FnMut(Progress<'_>)) -> Result<WorkerReport, Error> {
        let Worker { rt, run, tasks, _timer, threads } = self;
        let report = rt.block_on(measure(run.clone(), tasks, start, threads, on_event));
        rt.shutdown_timeout(Duration::from_secs(2));
        report
    }
}

async fn measure(
    run: Arc<Run>,
    tasks: Vec<JoinHandle<Outcome>>,
    start: u64,
    threads: usize,
    on_event: &mut dyn FnMut(Progress<'_>),
) -> Result<WorkerReport, Error> {
    let p = &run.params;
    let measure_start = start + secs_to_ns(p.warmup_s);
    let planned_end = measure_start + secs_to_ns(p.duration_s);
    sleep_until_ns(start).await;
    run.control.start(start, measure_start, planned_end);
    let storm = (p.scenario == Scenario::Connect).then(|| tokio::spawn(scenario::connect::storm(run.clone())));
    // Soak: churn from the first second of sending, every second until the window ends.
    let churn = p.worker.map_or(p.churn, |w| share(p.churn, w.index, w.count).1);
    let mut next_churn = start + 1_000_000_000;
    let churn_until = |run: &Run, now: u64, next: &mut u64| {
        while *next <= now.min(planned_end) && churn > 0 {
            scenario::soak::churn(run, churn);
            *next += 1_000_000_000;
        }
    };
    if churn == 0 {
        sleep_until_ns(measure_start).await;
    }
    while now_ns() < measure_start {
        tokio::time::sleep(Duration::from_millis(10).min(Duration::from_nanos(measure_start.saturating_sub(now_ns()))))
            .await;
        churn_until(&run, now_ns(), &mut next_churn);
    }
    let cpu0 = sys::self_cpu();
    let _ = run.stats.interval();
    let mut series = Vec::new();
    let mut tick_start = measure_start;
    // Soak: the latencies of each minute of the measurement (and of the drain after it).
    let mut minutes: Vec<Vec<(u64, u64)>> = Vec::new();
    let mut minute = new_hist()?;
    let soak = p.scenario == Scenario::Soak;
    let mut emit = |from: u64, to: u64, series: &mut Vec<Tick>| {
        let i = run.stats.interval_into(soak.then_some(&mut minute));
        if soak && (series.len() + 1) % 60 == 0 {
            minutes.push(to_raw(&minute));
            minute.reset();
        }
        let tick = Tick {
            index: series.len(),
            t_s: (to - measure_start) as f64 / 1e9,
            dur_s: (to - from) as f64 / 1e9,
            sent: i.sent,
            received: i.received,
            failed: i.failed,
            errors: i.errors,
            p99_us: i.p99_ns as f64 / 1000.0,
            alive: run.alive.load(Ordering::Relaxed) as u64,
        };
        on_event(Progress::Tick(&tick));
        series.push(tick);
    };
    let end = loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = now_ns();
        churn_until(&run, now, &mut next_churn);
        if now >= tick_start + 1_000_000_000 {
            let to = tick_start + 1_000_000_000;
            emit(tick_start, to, &mut series);
            tick_start = to;
        }
        if now >= planned_end || run.stats.total_reached() {
            break now.min(planned_end);
        }
    };
    run.control.set_phase(DRAIN);
    let multi = p.worker.is_some_and(|w| w.count > 1);
    let drain_ns = match p.scenario {
        Scenario::Connect => secs_to_ns(p.drain_s.max(p.connect_timeout_s + 1.0)),
        // Every client waits at most --drain for what it is owed, then closes (a few seconds);
        // one still setting up finishes that first.
        Scenario::Soak => secs_to_ns(p.drain_s + p.connect_timeout_s + 5.0),
        _ => secs_to_ns(p.drain_s),
    };
    let drain_deadline = now_ns() + drain_ns;
    let mut last_seen = (u64::MAX, now_ns());
    loop {
        let now = now_ns();
        let (sent, received, failed) = run.stats.progress();
        let complete = match p.scenario {
            Scenario::Echo | Scenario::Ack => received >= sent,
            Scenario::Chat => {
                let (expected, sent_acks, delivered_acks) = run.stats.chat_progress();
                received >= expected && sent_acks >= sent && delivered_acks >= sent
            }
            Scenario::Fanout if !multi => received >= sent * p.subscribers as u64,
            Scenario::Fanout => {
                if received != last_seen.0 {
                    last_seen = (received, now);
                }
                now - last_seen.1 >= QUIET_NS
            }
            Scenario::Connect => received + failed >= sent,
            Scenario::Idle => true,
            Scenario::Soak => run.soak.as_ref().is_none_or(|b| b.finished.load(Ordering::SeqCst) >= tasks.len()),
        };
        if complete || now >= drain_deadline {
            break;
        }
        if now >= tick_start + 1_000_000_000 {
            let to = tick_start + 1_000_000_000;
            emit(tick_start, to, &mut series);
            tick_start = to;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = now_ns();
    if done > tick_start + 50_000_000 || series.is_empty() {
        emit(tick_start, done, &mut series);
    }
    if soak && !minute.is_empty() {
        minutes.push(to_raw(&minute));
    }
    let cpu = sys::self_cpu().since(&cpu0);
    on_event(Progress::Drained);
    run.control.set_phase(STOP);
    if let Some(s) = storm {
        s.abort();
    }
    let (mut alive, mut dropped) = (0, 0);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for t in tasks {
            match t.await {
                Ok(Outcome::Alive) => alive += 1,
                Ok(Outcome::Dropped) => dropped += 1,
                _ => {}
            }
        }
    })
    .await;
    let totals = run.stats.totals()?;
    let setup_latency = run.setup_hist.lock().map(|h| to_raw(&h)).unwrap_or_default();
    let chat = (p.scenario == Scenario::Chat).then(|| WorkerChat {
        expected: totals.expected,
        sent_acks: to_raw(&totals.acks[Ack::Sent as usize]),
        delivered_acks: to_raw(&totals.acks[Ack::Delivered as usize]),
        duplicates: totals.duplicates,
    });
    let by_target = totals
        .by_target
        .iter()
        .enumerate()
        .map(|(i, (received, lat))| WorkerTarget {
            connections: run.plan.targets.iter().filter(|&&t| t == i).count(),
            received: *received,
            latency: to_raw(lat),
        })
        .collect();
    Ok(WorkerReport {
        index: p.worker.map(|w| w.index).unwrap_or(0),
        threads,
        planned: match p.scenario {
            Scenario::Connect => {
                share(p.connections, p.worker.map_or(0, |w| w.index), p.worker.map_or(1, |w| w.count)).1
            }
            _ => run.plan.roles.len(),
        },
        established: run.setup_ok.load(Ordering::Relaxed),
        setup_failed: run.setup_failed.load(Ordering::Relaxed),
        alive_at_end: alive,
        dropped,
        sent: totals.sent,
        received: totals.received,
        failed: totals.failed,
        unsent: totals.unsent,
        errors: run.stats.errors(),
        latency: to_raw(&totals.lat),
        setup_latency,
        chat,
        soak: run.soak.as_ref().map(|b| WorkerSoak { counts: b.counts.totals(), minutes }),
        by_target,
        series,
        cpu,
        peak_rss_kb: sys::self_peak_rss_kb(),
        wall_s: (done - measure_start) as f64 / 1e9,
        measured_s: (end - measure_start) as f64 / 1e9,
    })
}
