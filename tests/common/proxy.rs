//! A TCP proxy in front of a shared local server (NATS, Redis) whose connections a test can cut,
//! as a network failure would, without restarting the server other tests use.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

pub struct TcpProxy {
    pub port: u16,
    /// Both ends of every connection made so far (closed ones included, which costs nothing
    /// to shut down again).
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `target`
    /// (`host:port`).
    pub fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the proxy");
        let port = listener.local_addr().expect("its address").port();
        let live = Arc::new(Mutex::new(Vec::new()));
        let (target, conns) = (target.to_string(), live.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else { continue };
                {
                    let mut l = conns.lock().unwrap();
                    l.push(client.try_clone().expect("clone"));
                    l.push(server.try_clone().expect("clone"));
                }
                pipe(client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                pipe(server, client);
            }
        });
        Self { port, live }
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Closes every connection through the proxy, both ways; new ones are still accepted.
    /// Returns how many connections it cut.
    pub fn cut(&self) -> usize {
        let mut l = self.live.lock().unwrap();
        for s in l.iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let n = l.len() / 2;
        l.clear();
        n
    }
}

/// Copies `from` to `to` on a thread until either side closes, then closes both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(k) = from.read(&mut buf) {
            if k == 0 || to.write_all(&buf[..k]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
