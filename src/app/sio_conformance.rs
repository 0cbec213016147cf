//! `/socket.io/` in conformance mode: the Socket.IO test application (part B of the
//! conformance specification), built on the public [`crate::socketio`] API like any embedding
//! application would be.

use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::shard::Shard;
use crate::socketio::{Event, Namespace, SioConfig, Socket, SocketIo};

/// How long the server waits for the client's ack in `emit-with-ack`.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The application with the node's `[socketio]` settings (the command sets the protocol
/// suites' connect timeout of 1000 ms).
pub fn build(cfg: SioConfig) -> SocketIo {
    SocketIo::new(
        cfg,
        vec![Namespace::new("/").on_connection(on_main_connection), Namespace::new("/custom").on_connection(greet)],
    )
}

/// Every connection first receives the `auth` event with its CONNECT payload (or `{}`).
fn greet(shard: &Shard, s: &Rc<Socket>, auth: Option<&str>) {
    s.emit(shard, "auth", auth.unwrap_or("{}"));
}

fn on_main_connection(shard: &Shard, s: &Rc<Socket>, auth: Option<&str>) {
    greet(shard, s, auth);
    s.on("message", |shard, s, ev| s.emit_binary(shard, "message-back", ev.args_tail(), ev.binaries.clone()));
    s.on("message-with-ack", |shard, s, ev| s.ack(shard, &ev, ev.args_tail(), ev.binaries.clone()));
    s.on("echo-ack", |shard, s, ev| s.ack(shard, &ev, ev.args_tail(), ev.binaries.clone()));
    s.on("emit-with-ack", |shard, s, ev| {
        let me: Weak<Socket> = Rc::downgrade(s);
        s.emit_with_ack(shard, "emit-with-ack", ev.args_tail(), ev.binaries.clone(), ACK_TIMEOUT, move |shard, res| {
            if let (Ok(ack), Some(s)) = (res, me.upgrade()) {
                s.emit_binary(shard, "emit-with-ack", &ack.args_tail, ack.binaries);
            }
        });
    });
    s.on("join", |shard, s, ev| {
        with_room(shard, s, ev, |io, s, room| {
            let _ = s.join(io, room);
        })
    });
    s.on("leave", |shard, s, ev| {
        with_room(shard, s, ev, |io, s, room| {
            s.leave(io, room);
        })
    });
    s.on("publish", |shard, _s, ev| {
        let Some(io) = &shard.apps.socketio else { return };
        let Ok((msg,)) = ev.args::<(serde_json::Value,)>() else { return };
        let Some(room) = msg.get("room").and_then(|r| r.as_str()) else { return };
        io.of("/").to(room).emit_binary(shard, "msg", ev.args_tail(), ev.binaries.clone());
    });
}

/// `join` and `leave` take the room name as their first argument and ack with `"ok"`.
fn with_room(shard: &Shard, s: &Rc<Socket>, ev: Event<'_>, f: impl FnOnce(&SocketIo, &Rc<Socket>, &str)) {
    let Some(io) = &shard.apps.socketio else { return };
    let Ok((room,)) = ev.args::<(String,)>() else { return };
    f(io, s, &room);
    s.ack(shard, &ev, "\"ok\"", Vec::new());
}
