//! What the host says about processes: this process's CPU time (`getrusage`), a server's CPU
//! time and RSS (`/proc/PID/stat`, `/proc/PID/status`), a server's `/health` JSON, and the
//! open-file limit.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::target;

/// User and system CPU seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuTimes {
    pub user_s: f64,
    pub sys_s: f64,
}

impl CpuTimes {
    pub fn total(&self) -> f64 {
        self.user_s + self.sys_s
    }

    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes { user_s: self.user_s - earlier.user_s, sys_s: self.sys_s - earlier.sys_s }
    }

    pub fn add(&self, o: &CpuTimes) -> CpuTimes {
        CpuTimes { user_s: self.user_s + o.user_s, sys_s: self.sys_s + o.sys_s }
    }
}

/// CPU time of this process, all threads.
pub fn self_cpu() -> CpuTimes {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return CpuTimes::default();
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    CpuTimes { user_s: tv(ru.ru_utime), sys_s: tv(ru.ru_stime) }
}

/// CPU time of process `pid` from `/proc/PID/stat` (fields 14 and 15, utime and stime, in clock
/// ticks).
pub fn proc_cpu(pid: u32) -> Result<CpuTimes, Error> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Probe(format!("{path}: {e}")))?;
    parse_stat(&text).ok_or_else(|| Error::Probe(format!("{path}: unexpected format")))
}

fn parse_stat(text: &str) -> Option<CpuTimes> {
    // The command name (field 2) may hold spaces and parentheses: skip to the last ')'.
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    // `after` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some(CpuTimes { user_s: utime as f64 / hz, sys_s: stime as f64 / hz })
}

/// Resident set size of process `pid` in KiB (`VmRSS` in `/proc/PID/status`).
pub fn proc_rss_kb(pid: u32) -> Result<u64, Error> {
    status_kb(pid, "VmRSS:")
}

/// Peak resident set size of this process in KiB (`VmHWM`).
pub fn self_peak_rss_kb() -> u64 {
    status_kb(std::process::id(), "VmHWM:").unwrap_or(0)
}

fn status_kb(pid: u32, key: &str) -> Result<u64, Error> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Probe(format!("{path}: {e}")))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| Error::Probe(format!("{path}: no {key}")))
}

/// What a server's health endpoint told: its RSS, when it reports one, and its open connections
/// (imks: the sum of `shards[].connections`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub rss_kb: Option<u64>,
    pub connections: Option<u64>,
    /// imks: the sum of `shards[].websockets`.
    #[serde(default)]
    pub websockets: Option<u64>,
    /// imks: the sum of `shards[].engineio_sessions` (Socket.IO clients on any transport).
    #[serde(default)]
    pub engineio_sessions: Option<u64>,
    /// imks: `process.open_fds`.
    #[serde(default)]
    pub open_fds: Option<u64>,
}

/// GETs `url` (plain HTTP/1.1, `Connection: close`) and reads RSS and connection counts from its
/// JSON: a number under a key named `rss_bytes`, `rss_kb` or `rss` (bytes) anywhere in it.
pub fn health(url: &str) -> Result<Health, Error> {
    let body = http_get(url, "/health")?;
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| Error::Probe(format!("{url}: not JSON: {e}")))?;
    Ok(health_from_json(&json))
}

/// The body of `GET url` (plain HTTP/1.1, `Connection: close`, at most 4 MiB).
fn http_get(url: &str, default_path: &str) -> Result<Vec<u8>, Error> {
    let t = target::parse(url, 80, default_path)?;
    let io = |e: std::io::Error| Error::Probe(format!("{url}: {e}"));
    let mut s = TcpStream::connect_timeout(&t.addr, Duration::from_secs(5)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
    write!(s, "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", t.path, t.host).map_err(io)?;
    let mut body = Vec::new();
    s.take(4 << 20).read_to_end(&mut body).map_err(io)?;
    let start =
        body.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| Error::Probe(format!("{url}: no HTTP body")))?;
    body.drain(..start + 4);
    Ok(body)
}

/// imks: the sum of the `imks_identities_online` gauges (users with a native session) in the
/// Prometheus text at `url` (`http://HOST:PORT/metrics`).
pub fn identities_online(url: &str) -> Result<u64, Error> {
    let body = http_get(url, "/metrics")?;
    let text = String::from_utf8_lossy(&body);
    Ok(prometheus_sum(&text, "imks_identities_online"))
}

/// The sum of every sample of metric `name` in a Prometheus text exposition.
fn prometheus_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn health_from_json(v: &serde_json::Value) -> Health {
    fn find(v: &serde_json::Value, key: &str) -> Option<u64> {
        match v {
            serde_json::Value::Object(m) => {
                m.get(key).and_then(|x| x.as_u64()).or_else(|| m.values().find_map(|x| find(x, key)))
            }
            serde_json::Value::Array(a) => a.iter().find_map(|x| find(x, key)),
            _ => None,
        }
    }
    let rss_kb = find(v, "rss_kb")
        .or_else(|| find(v, "rss_bytes").map(|b| b / 1024))
        .or_else(|| find(v, "rss").map(|b| b / 1024));
    let connections = v
        .get("shards")
        .and_then(|s| s.as_array())
        .map(|shards| shards.iter().filter_map(|s| s.get("connections").and_then(|c| c.as_u64())).sum())
        .or_else(|| v.get("connections").and_then(|c| c.as_u64()));
    let per_shard = |key: &str| {
        v.get("shards")
            .and_then(|s| s.as_array())
            .map(|shards| shards.iter().filter_map(|s| s.get(key).and_then(|c| c.as_u64())).sum())
    };
    let websockets = per_shard("websockets");
    let engineio_sessions = per_shard("engineio_sessions");
    let open_fds = v.get("process").and_then(|p| p.get("open_fds")).and_then(|c| c.as_u64());
    Health { rss_kb, connections, websockets, engineio_sessions, open_fds }
}

/// Raises the soft open-file limit to the hard one and returns it.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    lim.rlim_cur
}

/// Cores this process may run on (its affinity mask, so `taskset -c 1` means one).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_odd_names() {
        let line = "1234 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 4 0 100 2000 300";
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let c = parse_stat(line).unwrap();
        assert_eq!((c.user_s, c.sys_s), (250.0 / hz, 150.0 / hz));
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(proc_rss_kb(pid).unwrap() > 0);
        assert!(proc_cpu(pid).is_ok());
    }

    #[test]
    fn prometheus_samples_are_summed() {
        let text = "# HELP imks_identities_online Users.\n# TYPE imks_identities_online gauge\n\
                    imks_identities_online{shard=\"0\"} 2\nimks_identities_online{shard=\"1\"} 3\n\
                    imks_identities_online_total 9\nother 1\n";
        assert_eq!(prometheus_sum(text, "imks_identities_online"), 5);
        assert_eq!(prometheus_sum(text, "missing"), 0);
    }

    #[test]
    fn health_json_is_read() {
        let v =
            serde_json::json!({"status":"ok","shards":[{"connections":3},{"connections":4}],"mem":{"rss_bytes":4096}});
        assert_eq!(
            health_from_json(&v),
            Health {
                rss_kb: Some(4),
                connections: Some(7),
                websockets: Some(0),
                engineio_sessions: Some(0),
                open_fds: None
            }
        );
        let v = serde_json::json!({"process":{"open_fds":12},"shards":[{"connections":1,"websockets":2,"engineio_sessions":3}]});
        assert_eq!(
            health_from_json(&v),
            Health {
                rss_kb: None,
                connections: Some(1),
                websockets: Some(2),
                engineio_sessions: Some(3),
                open_fds: Some(12)
            }
        );
    }
}
