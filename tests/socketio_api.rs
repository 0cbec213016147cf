//! The embeddable Socket.IO API on a real node: dynamic namespaces, middleware refusing with
//! data, server-side disconnect, ack timeouts and disconnect reasons.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sio_text as text;
use common::*;
use imks::config::file::FileConfig;
use imks::socketio::{AckError, ConnectRefusal, Namespace, SioConfig, SocketIo};
use imks::{Config, Node};
use tungstenite::Message;

fn start_app(reasons: Arc<Mutex<Vec<String>>>) -> (Node, SocketAddr) {
    let mut f = FileConfig::default();
    f.server.listen = vec!["127.0.0.1:0".into()];
    f.server.shards = 2;
    f.server.pin_threads = false;
    f.log.level = "warn".into();
    let config = Config::resolve(f, |_| Ok(None)).unwrap();
    let factory = move || {
        let reasons = reasons.clone();
        let on_connection = move |shard: &imks::shard::Shard,
                                  s: &std::rc::Rc<imks::socketio::Socket>,
                                  _: Option<&str>| {
            let reasons = reasons.clone();
            s.on_disconnect(move |_, _, reason| reasons.lock().unwrap().push(reason.to_string()));
            s.on("volatile", |shard, s, _| s.emit_volatile(shard, "v", "1"));
            // Overrides the namespace's handler for this socket.
            s.on("who", |shard, s, _| s.emit(shard, "who", "\"socket\""));
            s.on("kick", |shard, s, _| {
                if let Some(io) = &shard.service::<SocketIo>() {
                    s.disconnect(shard, io, false);
                }
            });
            s.on("ask", |shard, s, _| {
                let me = std::rc::Rc::downgrade(s);
                s.emit_with_ack(shard, "question", "", Vec::new(), Duration::from_millis(200), move |shard, res| {
                    if let (Err(AckError::Timeout), Some(s)) = (res, me.upgrade()) {
                        s.emit(shard, "ack-timeout", "");
                    }
                });
            });
            let _ = shard;
        };
        SocketIo::new(
            SioConfig::default(),
            vec![
                Namespace::new("/")
                    .on_connection(on_connection)
                    .on("shared", |shard, s, ev| s.ack(shard, &ev, "\"namespace\"", Vec::new()))
                    .on("who", |shard, s, _| s.emit(shard, "who", "\"namespace\""))
                    // To the room named by the socket's own id, and to it again through a union.
                    .on("self", |shard, s, _| {
                        if let Some(io) = &shard.service::<SocketIo>() {
                            io.of("/").to(&s.id).emit(shard, "to-self", "1");
                            io.of("/").to(&s.id).to("nobody-here").emit(shard, "to-self", "2");
                            io.of("/").except(&s.id).emit(shard, "to-others", "3");
                            s.emit(shard, "done", "");
                        }
                    }),
                Namespace::new("/private").middleware(|_, _, auth| match auth {
                    Some(a) if a.contains("\"secret\"") => Ok(()),
                    _ => Err(ConnectRefusal {
                        message: "unauthorized".into(),
                        data: Some(r#"{"need":"secret"}"#.into()),
                    }),
                }),
                Namespace::dynamic(|name| name.starts_with("/dyn-")),
            ],
        )
    };
    let node = Node::start_with(config, Some(Arc::new(factory))).unwrap();
    let addr = node.local_addrs()[0];
    (node, addr)
}

fn open(addr: SocketAddr) -> Ws {
    let mut c = ws(addr, "/socket.io/?EIO=4&transport=websocket");
    assert!(text(&mut c).unwrap().starts_with("0{"));
    c
}

#[test]
fn namespaces_middleware_and_server_side_disconnect() {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let (_node, addr) = start_app(reasons.clone());
    let mut c = open(addr);

    c.send(Message::text("40/private,")).unwrap();
    assert_eq!(text(&mut c).unwrap(), r#"44/private,{"message":"unauthorized","data":{"need":"secret"}}"#);
    c.send(Message::text(r#"40/private,{"secret":1}"#)).unwrap();
    assert!(text(&mut c).unwrap().starts_with("40/private,{\"sid\":"));

    c.send(Message::text("40/dyn-42,")).unwrap();
    assert!(text(&mut c).unwrap().starts_with("40/dyn-42,{\"sid\":"));
    c.send(Message::text("40/other,")).unwrap();
    assert_eq!(text(&mut c).unwrap(), r#"44/other,{"message":"Invalid namespace"}"#);

    c.send(Message::text("40")).unwrap();
    assert!(text(&mut c).unwrap().starts_with("40{\"sid\":"));
    // Handlers of the namespace serve every socket; a socket's own handler wins.
    c.send(Message::text(r#"427["shared"]"#)).unwrap();
    assert_eq!(text(&mut c).unwrap(), r#"437["namespace"]"#);
    c.send(Message::text(r#"42["who"]"#)).unwrap();
    assert_eq!(text(&mut c).unwrap(), r#"42["who","socket"]"#);
    // Every socket is in the room named by its id: reached once, and left out by `except`.
    c.send(Message::text(r#"42["self"]"#)).unwrap();
    assert_eq!(text(&mut c).unwrap(), r#"42["to-self",1]"#);
    assert_eq!(text(&mut c).unwrap(), r#"42["to-self",2]"#);
    assert_eq!(text(&mut c).unwrap(), r#"42["done"]"#);
    // A volatile emit goes out when the transport can take it.
    c.send(Message::text(r#"42["volatile"]"#)).unwrap();
    assert_eq!(text(&mut c).unwrap(), r#"42["v",1]"#);
    // The server asks with an ack we never give: its callback sees the timeout.
    c.send(Message::text(r#"42["ask"]"#)).unwrap();
    assert_eq!(text(&mut c).unwrap(), r#"421["question"]"#);
    assert_eq!(text(&mut c).unwrap(), r#"42["ack-timeout"]"#);
    // Kicked from `/` by the server; the connection and other namespaces live on.
    c.send(Message::text(r#"42["kick"]"#)).unwrap();
    assert_eq!(text(&mut c).unwrap(), "41");
    assert!(
        wait_until(Duration::from_secs(5), || reasons.lock().unwrap().as_slice() == ["server namespace disconnect"])
    );
    c.send(Message::text("40")).unwrap();
    assert!(text(&mut c).unwrap().starts_with("40{\"sid\":"));
    c.send(Message::text("41")).unwrap();
    assert!(wait_until(Duration::from_secs(5), || reasons.lock().unwrap().len() == 2));
    assert_eq!(reasons.lock().unwrap()[1], "client namespace disconnect");
    c.send(Message::text("40")).unwrap();
    assert!(text(&mut c).unwrap().starts_with("40{\"sid\":"));
    drop(c);
    assert!(wait_until(Duration::from_secs(5), || reasons.lock().unwrap().len() == 3));
    assert_eq!(reasons.lock().unwrap()[2], "transport close");
}
