//! A NATS server of the test's own (with JetStream, in a temporary store directory), on a free
//! port of 127.0.0.1: a test may kill it and start it again, on the same port and store,
//! without touching the shared server on 4222. Killed and deleted when dropped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateNats {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts `nats-server -js` (from `PATH`: `make test-deps` installs it); returns once it
    /// accepts connections.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("imks-nats-{}-{:x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir(&dir).expect("a temporary store directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let mut nats = PrivateNats { dir, port, child: None };
        nats.restart();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `kill -9`: the server ends at once, with whatever it had not written to its store.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server (again, after [`PrivateNats::kill`]: on the same port and store, so
    /// its streams are back); returns once it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let store = self.dir.join("store");
        let log = self.dir.join("log");
        let port = self.port.to_string();
        // The log of this start only: it says when the server is ready.
        let _ = std::fs::remove_file(&log);
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(&store)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (make test-deps installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        // The port answers once the server listens; it logs "Server is ready" once JetStream
        // has read its store back too.
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start; see {}", log.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Server is ready")) {
            assert!(Instant::now() < deadline, "nats-server is not ready; see {}", log.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
