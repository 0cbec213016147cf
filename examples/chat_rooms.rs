//! A minimal chat server embedding imks: clients `join` a room and `say` something to it; every
//! member on every shard gets `said`. Handlers run on the shard that owns the socket, so they
//! may hold `Rc`s and other `!Send` state.
//!
//! Run with `cargo run --example chat_rooms`, then connect any Socket.IO 4.x client to
//! `http://127.0.0.1:3000` and emit `join` ("lobby") and `say` ({"room":"lobby","text":"hi"}).

use std::rc::Rc;
use std::sync::Arc;

use imks::config::file::FileConfig;
use imks::shard::Shard;
use imks::socketio::{Namespace, SioConfig, Socket, SocketIo};
use imks::{Config, Node};

fn chat() -> SocketIo {
    SocketIo::new(
        SioConfig::default(),
        vec![Namespace::new("/")
            .middleware(|_shard, _socket, auth| match auth {
                // A real application checks a token here; refusing sends CONNECT_ERROR.
                Some(a) if a.contains("\"banned\"") => {
                    Err(imks::socketio::ConnectRefusal { message: "not allowed".into(), data: None })
                }
                _ => Ok(()),
            })
            .on_connection(on_connection)],
    )
}

fn on_connection(shard: &Shard, socket: &Rc<Socket>, _auth: Option<&str>) {
    socket.emit(shard, "welcome", &format!("{{\"id\":\"{}\"}}", socket.id));
    socket.on("join", |shard, socket, ev| {
        let (Some(io), Ok((room,))) = (shard.service::<SocketIo>(), ev.args::<(String,)>()) else { return };
        if let Err(e) = socket.join(&io, &room) {
            tracing::debug!(error = %e, "join refused");
        }
        socket.ack(shard, &ev, "true", Vec::new());
    });
    socket.on("say", |shard, socket, ev| {
        let Some(io) = shard.service::<SocketIo>() else { return };
        let Ok((msg,)) = ev.args::<(serde_json::Value,)>() else { return };
        let Some(room) = msg["room"].as_str() else { return };
        // Encoded once, delivered to the room's members on every shard, sender excluded.
        io.of("/").to(room).except_socket(&socket.id).emit(shard, "said", ev.args_tail());
    });
    socket.on_disconnect(|_shard, socket, reason| tracing::info!(id = %socket.id, reason, "left"));
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut file = FileConfig::default();
    file.server.listen = vec!["127.0.0.1:3000".into()];
    let config = Config::resolve(file, |_| Ok(None))?;
    let node = Node::start_with(config, Some(Arc::new(chat)))?;
    tracing::info!(addr = ?node.local_addrs(), "chat example listening; Ctrl-C to stop");
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    signals.forever().next();
    node.shutdown();
    Ok(())
}
