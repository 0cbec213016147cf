//! `imks client URL`: a small line-based WebSocket client, so that trying a node needs nothing
//! but the binary. Each line of standard input is sent as a text message; each message received
//! is printed on a line of its own (binary ones as their size). At the end of input it closes
//! the connection and waits a moment for the server's close.

use std::io::{BufRead, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

/// Why the client stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}: give a ws://HOST:PORT/PATH address (wss:// needs a TLS client; put one in front)")]
    Url(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("the WebSocket handshake failed: {0}")]
    Handshake(String),
    #[error("{0}")]
    Ws(#[from] tungstenite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How long one read waits before the client looks at standard input again.
const POLL: Duration = Duration::from_millis(20);

/// How long it waits for the server's close after its own.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub fn run(url: &str) -> Result<(), ClientError> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| ClientError::Url(url.to_string()))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(ClientError::Url(url.to_string()));
    }
    let addr = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    let stream = TcpStream::connect(&addr).map_err(|source| ClientError::Connect { addr: addr.clone(), source })?;
    stream.set_nodelay(true)?;
    let (mut ws, _) = tungstenite::client(url, stream).map_err(|e| ClientError::Handshake(e.to_string()))?;
    ws.get_ref().set_read_timeout(Some(POLL))?;

    // Standard input blocks, so a thread reads it and hands the lines over.
    let (lines, input) = mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = lines.send(None);
    });

    let mut closing: Option<Instant> = None;
    loop {
        while closing.is_none() {
            match input.try_recv() {
                Ok(Some(line)) => ws.send(Message::text(line))?,
                Ok(None) | Err(mpsc::TryRecvError::Disconnected) => {
                    ws.close(None)?;
                    closing = Some(Instant::now());
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        if closing.is_some_and(|t| t.elapsed() > CLOSE_WAIT) {
            return Ok(());
        }
        match read(&mut ws) {
            Ok(Some(Message::Text(t))) => println!("{t}"),
            Ok(Some(Message::Binary(b))) => println!("<binary message, {} bytes>", b.len()),
            Ok(Some(Message::Close(frame))) => {
                if closing.is_none() {
                    let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                    eprintln!("imks client: the server closed the connection {why}");
                }
                // Flush our answer to its close.
                let _ = ws.flush();
                return Ok(());
            }
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        std::io::stdout().flush()?;
    }
}

/// The next message, or `None` when nothing arrived within [`POLL`].
fn read(ws: &mut WebSocket<TcpStream>) -> Result<Option<Message>, tungstenite::Error> {
    match ws.read() {
        Ok(m) => Ok(Some(m)),
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
