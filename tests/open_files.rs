//! The open files limit: imks raises its soft limit to the hard one at start-up, so a node is
//! not capped at the 1024 descriptors many service managers and shells give by default.
//!
//! Its own test binary: lowering this process's limit would starve tests running beside it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn limits() -> libc::rlimit {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `lim`, a valid local.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim
}

/// The soft limit for a test to start from: below the hard limit, above what a test needs.
fn low_soft(hard: u64) -> u64 {
    assert!(hard > 300, "the hard open files limit ({hard}) leaves no room to test raising the soft one");
    256
}

#[test]
fn the_soft_limit_is_raised_to_the_hard_one() {
    let lim = limits();
    let low = low_soft(lim.rlim_max);
    let lowered = libc::rlimit { rlim_cur: low, rlim_max: lim.rlim_max };
    // SAFETY: setrlimit reads one rlimit from a valid local; lowering the soft limit needs no
    // privilege.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);

    let files = imks::limits::raise_open_files().unwrap();
    assert_eq!(files.before, low);
    assert!(files.now > low);
    let after = limits();
    assert_eq!(after.rlim_cur, files.now);
    if lim.rlim_max != libc::RLIM_INFINITY {
        assert_eq!(after.rlim_cur, lim.rlim_max);
    }
    // Raised already: nothing to do.
    assert_eq!(
        imks::limits::raise_open_files().unwrap(),
        imks::limits::OpenFiles { before: files.now, now: files.now }
    );
}

/// Kills the server when the test ends, whatever happens.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `imks conformance` with the given open files limit and environment, and returns it
/// with its log up to the line saying it listens (start-up is over then).
fn start(limit: libc::rlimit, envs: &[(&str, &str)]) -> (Server, Vec<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imks"));
    cmd.args(["conformance", "--port", "0"])
        .env("IMKS_LOG__LEVEL", "info")
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which
    // is async-signal-safe, on a rlimit copied into it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut server = Server(cmd.spawn().unwrap());
    // The log goes to stdout or stderr, depending on the level.
    let (tx, rx) = std::sync::mpsc::channel();
    for out in [
        server.0.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        server.0.stderr.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("imks listening")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => panic!("the server did not start; its log:\n{}", log.join("\n")),
        }
    }
    (server, log)
}

#[test]
fn the_server_starts_with_its_soft_limit_raised() {
    let hard = limits().rlim_max;
    let low = low_soft(hard);
    let (server, log) = start(libc::rlimit { rlim_cur: low, rlim_max: hard }, &[]);
    assert!(log.iter().any(|l| l.contains("raised the open files limit")), "{}", log.join("\n"));

    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.0.id())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    let (soft, hard_seen) = (fields[3], fields[4]);
    assert_eq!(soft, hard_seen, "{line}");
    assert_ne!(soft, low.to_string(), "{line}");
}

#[test]
fn a_hard_limit_below_max_connections_is_reported() {
    const WARNING: &str = "the open files limit is below server.max_connections";
    // A hard limit the server cannot raise: 512 descriptors, room for 256 connections besides
    // the 256 the node keeps for itself.
    let limit = libc::rlimit { rlim_cur: 512, rlim_max: 512 };
    assert!(limits().rlim_max >= 512, "this test lowers the hard limit to 512");
    let (_server, log) = start(limit, &[("IMKS_SERVER__MAX_CONNECTIONS", "257")]);
    assert!(log.iter().any(|l| l.contains(WARNING)), "{}", log.join("\n"));
    let (_server, log) = start(limit, &[("IMKS_SERVER__MAX_CONNECTIONS", "256")]);
    assert!(!log.iter().any(|l| l.contains(WARNING)), "{}", log.join("\n"));
}

#[test]
fn by_default_max_connections_follows_the_limit_and_nothing_warns() {
    const WARNING: &str = "the open files limit is below server.max_connections";
    // The same hard limit of 512: room for 256 connections, which the default takes.
    let limit = libc::rlimit { rlim_cur: 512, rlim_max: 512 };
    assert!(limits().rlim_max >= 512, "this test lowers the hard limit to 512");
    let (_server, log) = start(limit, &[]);
    assert!(!log.iter().any(|l| l.contains(WARNING)), "a default start warns of nothing: {}", log.join("\n"));

    let mut check = Command::new(env!("CARGO_BIN_EXE_imks"));
    check.args(["config", "check"]);
    // SAFETY: only async-signal-safe setrlimit between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut check, move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = check.output().expect("imks config check runs");
    let resolved: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(resolved["max_connections"], 256, "512 descriptors less the node's 256");
}
