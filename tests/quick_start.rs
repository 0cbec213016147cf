//! The README's quick start, run as written against a real node, so it cannot rot: every
//! command of the block that follows "Then, from another terminal" runs through `sh`, with the
//! node on a free port instead of 3000 and this build's binary for `target/release/imks`. A
//! command whose comment says "then type X" gets X on its input; the others get a line to echo.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The node, killed when the test ends.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quick_start_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let after = readme.split("Then, from another terminal").nth(1).expect("the quick start's second block");
    let block = after.split("```sh").nth(1).and_then(|b| b.split("```").next()).expect("a sh block");
    block.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

#[test]
fn every_command_of_the_quick_start_works() {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let imks = env!("CARGO_BIN_EXE_imks");
    let node = Node(
        Command::new(imks)
            .arg("serve")
            .env("IMKS_SERVER__LISTEN", format!("[\"127.0.0.1:{port}\"]"))
            .env("IMKS_SERVER__SHARDS", "2")
            .env("IMKS_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("imks serve starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the node did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }

    let commands = quick_start_commands();
    assert!(commands.len() >= 4, "{commands:?}");
    for line in &commands {
        let (command, comment) = line.split_once('#').unwrap_or((line, ""));
        let command =
            command.trim().replace("localhost:3000", &format!("127.0.0.1:{port}")).replace("target/release/imks", imks);
        let input = match comment.split_once("then type ") {
            Some((_, typed)) => typed.trim().to_string(),
            None => "hello from the quick start".to_string(),
        };
        let mut child = Command::new("sh")
            .args(["-c", &command])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh runs");
        child.stdin.take().expect("stdin").write_all(format!("{input}\n").as_bytes()).expect("input");
        let out = child.wait_with_output().expect("the command ends");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "`{line}` failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!stdout.trim().is_empty(), "`{line}` printed nothing");
        if command.contains("/health") {
            assert!(stdout.contains("\"status\":\"ok\""), "{stdout}");
        }
        if command.contains("/ws-echo") {
            assert!(stdout.contains(&input), "the echo of {input:?}: {stdout}");
        }
        if input.contains("ping") {
            assert!(stdout.contains("\"pong\""), "{stdout}");
        }
    }
    drop(node);
}
