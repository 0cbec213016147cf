//! Raw-frame baseline for `bench/run`: plain RFC 6455 over tokio-tungstenite on a current-thread
//! tokio runtime (one core), with no Socket.IO or Engine.IO layer. It marks the practical ceiling
//! of a WebSocket server on this machine.
//!
//! - `/ws-echo`: every text or binary message is sent back as it came.
//! - `/ws-fanout`: the raw fan-out convention of `loadgen/README.md`. A text `{"join":"R"}` puts
//!   the connection in room R and is answered with the text `ok`; any other text object with a
//!   `"room"` field is forwarded unchanged to every member of that room.
//!
//! Messages that are already buffered are handled together and their answers leave in one flush
//! (one `write` for many frames). A fan-out connection has a reader (this connection's task) and
//! a writer task; a forwarded message reaches each member's writer through a channel and shares
//! its payload bytes (`Utf8Bytes` is reference counted), and a writer sends everything queued
//! for it in one flush. The reader is only polled when its socket is readable.
//!
//! tungstenite zero-fills its free read buffer (128 KiB by default) before every `read`, even one
//! that finds nothing; with messages of a few hundred bytes that dominated the profile, so the
//! read buffer is 4 KiB here (it still grows for larger messages).
//!
//! Usage: imks-bench-baseline PORT

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use futures_util::stream::SplitSink;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// Free space tungstenite reads into (and zero-fills first) on every read.
const READ_BUFFER: usize = 4096;

/// Room name → members (connection id, the channel to its task).
#[derive(Default)]
struct Rooms {
    next_id: u64,
    rooms: HashMap<String, Vec<(u64, mpsc::UnboundedSender<Message>)>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Endpoint {
    Echo,
    Fanout,
}

fn main() {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        Some(Ok(port)) => port,
        _ => {
            eprintln!("usage: imks-bench-baseline PORT");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        println!("baseline listening on 127.0.0.1:{port}");
        let rooms = Rc::new(RefCell::new(Rooms::default()));
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::task::spawn_local(serve(stream, rooms.clone()));
                    }
                    // EMFILE and the like: drop this one, keep serving the others.
                    Err(e) => eprintln!("accept: {e}"),
                },
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    });
}

async fn serve(stream: TcpStream, rooms: Rc<RefCell<Rooms>>) {
    stream.set_nodelay(true).ok();
    let mut endpoint = None;
    // The callback's type is tungstenite's; its error is an HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        endpoint = match req.uri().path() {
            "/ws-echo" => Some(Endpoint::Echo),
            "/ws-fanout" => Some(Endpoint::Fanout),
            _ => None,
        };
        match endpoint {
            Some(_) => Ok(resp),
            None => {
                let mut not_found = ErrorResponse::new(Some("not found".into()));
                *not_found.status_mut() = StatusCode::NOT_FOUND;
                Err(not_found)
            }
        }
    };
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await else {
        return;
    };
    match endpoint {
        Some(Endpoint::Echo) => {
            echo(ws).await.ok();
        }
        Some(Endpoint::Fanout) => fanout(ws, rooms).await,
        None => {}
    }
}

/// Echo every data message; answers to messages already read leave together in one flush.
async fn echo(mut ws: Ws) -> Result<(), WsError> {
    while let Some(msg) = ws.next().await {
        let mut msg = msg?;
        loop {
            if msg.is_text() || msg.is_binary() {
                ws.feed(msg).await?;
            }
            // Pings are answered and closes echoed by tungstenite itself.
            match ws.next().now_or_never() {
                Some(Some(next)) => msg = next?,
                Some(None) => return ws.flush().await,
                None => break,
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

async fn fanout(ws: Ws, rooms: Rc<RefCell<Rooms>>) {
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::task::spawn_local(write_queued(sink, rx));
    let id = {
        let mut r = rooms.borrow_mut();
        r.next_id += 1;
        r.next_id
    };
    let mut joined: Vec<String> = Vec::new();
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Text(text) = &msg {
            on_text(text, &msg, id, &tx, &rooms, &mut joined);
        }
    }
    // Leave every room; the writer ends once the last sender (ours) is gone.
    {
        let mut r = rooms.borrow_mut();
        for room in joined {
            if let Some(members) = r.rooms.get_mut(&room) {
                members.retain(|(member, _)| *member != id);
                if members.is_empty() {
                    r.rooms.remove(&room);
                }
            }
        }
    }
    drop(tx);
    writer.await.ok();
}

/// Send whatever is queued for this connection, in one flush per wake-up.
async fn write_queued(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
) -> Result<(), WsError> {
    while let Some(mut out) = rx.recv().await {
        loop {
            sink.feed(out).await?;
            match rx.try_recv() {
                Ok(next) => out = next,
                Err(_) => break,
            }
        }
        sink.flush().await?;
    }
    sink.close().await
}

/// `{"join":"R"}` → join R and answer `ok`; `{"room":"R",...}` → forward the same text to R.
fn on_text(
    text: &str,
    msg: &Message,
    id: u64,
    tx: &mpsc::UnboundedSender<Message>,
    rooms: &RefCell<Rooms>,
    joined: &mut Vec<String>,
) {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    if let Some(room) = obj.get("join").and_then(|r| r.as_str()) {
        if !joined.iter().any(|j| j == room) {
            rooms.borrow_mut().rooms.entry(room.to_owned()).or_default().push((id, tx.clone()));
            joined.push(room.to_owned());
        }
        tx.send(Message::text("ok")).ok();
    } else if let Some(room) = obj.get("room").and_then(|r| r.as_str()) {
        if let Some(members) = rooms.borrow().rooms.get(room) {
            for (_, member) in members {
                // Cloning a text message shares its bytes.
                member.send(msg.clone()).ok();
            }
        }
    }
}
