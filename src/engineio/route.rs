//! Where an Engine.IO request goes: the polling transport, or a WebSocket on this shard or on
//! the one that owns its session.

use std::rc::Rc;

use super::polling::{admit, polling};
use super::websocket::adopt;
use super::{parse_query, EioApp, EioWs, Engine, RequestError, Sid, TransportKind};
use crate::http::parse::RequestHead;
use crate::shard::route::{HttpHandler, ResponseFuture};
use crate::shard::{Route, Shard};

/// Where an Engine.IO request for `app` goes: a polling request (or its preflight) is answered
/// over HTTP; a WebSocket opens a fresh session, upgrades one of this shard, or moves to the
/// shard that owns the session it upgrades.
pub fn route(shard: &Rc<Shard>, engine: &Rc<Engine>, app: Rc<dyn EioApp>, head: &RequestHead) -> Route {
    let cfg = &engine.cfg;
    if !head.is_websocket_upgrade() {
        return Route::Http(Rc::new(Polling { engine: engine.clone(), app }));
    }
    let q = match parse_query(head) {
        Ok(q) => q,
        Err(e) => return Route::Fixed(e.response(head, cfg)),
    };
    if q.transport != TransportKind::WebSocket {
        return Route::Fixed(RequestError::BadRequest.response(head, cfg));
    }
    let upgrade_of = match q.sid {
        None => None,
        Some(sid) => match sid.parse::<Sid>().map(|id| usize::from(id.shard)) {
            Ok(owner) if owner != shard.index && owner < shard.shard_count() => {
                return Route::HandOff { owner, adopt: Box::new(move |shard: &Rc<Shard>| adopt(shard, &sid)) };
            }
            _ => match engine.get(shard, &sid) {
                // A session already on a WebSocket: `EioWs` answers 101 and closes at once.
                Some(s) => Some(s),
                None => return Route::Fixed(RequestError::UnknownSid.response(head, cfg)),
            },
        },
    };
    if upgrade_of.is_some() {
        return Route::WebSocket(Rc::new(EioWs::new(engine.clone(), app, upgrade_of)));
    }
    match admit(shard, head) {
        Ok(identity) => {
            Route::WebSocket(Rc::new(EioWs::new(engine.clone(), app, None).with_identity(identity.map(Rc::new))))
        }
        Err(refused) => Route::Fixed(refused),
    }
}

/// The polling transport of one app.
struct Polling {
    engine: Rc<Engine>,
    app: Rc<dyn EioApp>,
}

impl HttpHandler for Polling {
    fn respond<'a>(&'a self, shard: &'a Rc<Shard>, head: &'a RequestHead, body: &'a [u8]) -> ResponseFuture<'a> {
        Box::pin(polling(shard, &self.engine, &self.app, head, body))
    }
}
