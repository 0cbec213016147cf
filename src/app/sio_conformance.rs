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
/// suites' connect timeout of 1000 ms). The event handlers belong to the namespace, so they
/// cost nothing per socket.
pub fn build(cfg: SioConfig) -> SocketIo {
    let main = Namespace::new("/")
        .on_connection(greet)
        .on("message", |shard, s, ev| s.emit_binary(shard, "message-back", ev.args_tail(), ev.binaries.clone()))
        .on("message-with-ack", |shard, s, ev| s.ack(shard, &ev, ev.args_tail(), ev.binaries.clone()))
        .on("echo-ack", |shard, s, ev| s.ack(shard, &ev, ev.args_tail(), ev.binaries.clone()))
        .on("emit-with-ack", |shard, s, ev| {
            let me: Weak<Socket> = Rc::downgrade(s);
            let (args, binaries) = (ev.args_tail(), ev.binaries.clone());
            s.emit_with_ack(shard, "emit-with-ack", args, binaries, ACK_TIMEOUT, move |shard, res| {
                if let (Ok(ack), Some(s)) = (res, me.upgrade()) {
                    s.emit_binary(shard, "emit-with-ack", &ack.args_tail, ack.binaries);
                }
            });
        })
        .on("join", |shard, s, ev| {
            with_room(shard, s, ev, |io, s, room| {
                let _ = s.join(io, room);
            })
        })
        .on("leave", |shard, s, ev| {
            with_room(shard, s, ev, |io, s, room| {
                s.leave(io, room);
            })
        })
        // Broadcasts `msg` with its argument to the room it names; acks `"ok"` once it is sent,
        // when the client asks for an ack.
        .on("publish", |shard, s, ev| {
            let Some(io) = shard.service::<SocketIo>() else { return };
            let Ok((msg,)) = ev.args::<(serde_json::Value,)>() else { return };
            let Some(room) = msg.get("room").and_then(|r| r.as_str()) else { return };
            io.of("/").to(room).emit_binary(shard, "msg", ev.args_tail(), ev.binaries.clone());
            s.ack(shard, &ev, "\"ok\"", Vec::new());
        });
    SocketIo::new(cfg, vec![main, Namespace::new("/custom").on_connection(greet)])
}

/// Every connection first receives the `auth` event with its CONNECT payload (or `{}`).
fn greet(shard: &Shard, s: &Rc<Socket>, auth: Option<&str>) {
    s.emit(shard, "auth", auth.unwrap_or("{}"));
}

/// `join` and `leave` take the room name as their first argument and ack with `"ok"`.
fn with_room(shard: &Shard, s: &Rc<Socket>, ev: Event<'_>, f: impl FnOnce(&SocketIo, &Rc<Socket>, &str)) {
    let Some(io) = shard.service::<SocketIo>() else { return };
    let Ok((room,)) = ev.args::<(String,)>() else { return };
    f(&io, s, &room);
    s.ack(shard, &ev, "\"ok\"", Vec::new());
}
