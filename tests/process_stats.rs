//! `/health` and `/metrics` report the process's memory and descriptors. A test binary of its
//! own: descriptor counts are per process, and other tests in the same process would open and
//! close theirs meanwhile.

mod common;

use std::time::Duration;

use common::*;
#[test]
fn health_and_metrics_report_the_process_memory_and_open_files() {
    let (_node, addr) = start("epoll", 1, |_| {});
    let fds = |h: &serde_json::Value| h["process"]["open_fds"].as_u64().expect("open_fds");
    let before = health(addr);
    assert!(before["process"]["rss_bytes"].as_u64().expect("rss_bytes") > 1 << 20, "{before}");
    let held: Vec<std::net::TcpStream> = (0..20).map(|_| connect(addr)).collect();
    let registered = || metric_sum(addr, "imks_connections_active") >= 21;
    assert!(wait_until(Duration::from_secs(5), registered), "the node holds the idle connections");
    let after = health(addr);
    assert!(fds(&after) >= fds(&before) + 20, "one descriptor per connection: {before} then {after}");
    assert!(after["process"]["max_fds"].as_u64().expect("max_fds") >= fds(&after));
    let (_, _, body) = get(addr, "/metrics");
    let text = String::from_utf8(body).unwrap();
    for family in ["process_resident_memory_bytes", "process_open_fds", "process_max_fds"] {
        assert!(text.contains(&format!("\n{family} ")), "{family} in /metrics");
    }
    drop(held);
}
