//! The addresses a run talks to, from `--url` (one per node of a cluster). Nothing else is ever
//! connected to (apart from an explicit `--health-url`).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::error::Error;
use crate::params::{Params, Protocol, Scenario};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header: what the URL said.
    pub host: String,
    /// Path and query of the upgrade request.
    pub path: String,
}

impl Target {
    /// Every `--url` of the run, in order.
    pub fn all(p: &Params) -> Result<Vec<Target>, Error> {
        p.urls.iter().map(|u| Target::from_url(p, u)).collect()
    }

    fn from_url(p: &Params, url: &str) -> Result<Target, Error> {
        let default_path = match (p.scenario, p.protocol) {
            (_, Protocol::Sio) => "/socket.io/",
            (Scenario::Fanout, Protocol::Ws) => "/ws-fanout",
            (Scenario::Chat, Protocol::Ws) => "/ws",
            (_, Protocol::Ws) => "/ws-echo",
        };
        let mut t = parse(url, 80, default_path)?;
        if p.protocol == Protocol::Sio {
            let sep = if t.path.contains('?') { '&' } else { '?' };
            t.path.push(sep);
            t.path.push_str("EIO=4&transport=websocket");
        }
        Ok(t)
    }

    /// Whether the server is on 127.0.0.0/8 (or ::1), where worker processes may bind their own
    /// source addresses.
    pub fn is_loopback(&self) -> bool {
        self.addr.ip().is_loopback()
    }
}

/// Parses `ws://host[:port][/path]` (also `http://`); `wss://` is refused.
pub fn parse(url: &str, default_port: u16, default_path: &str) -> Result<Target, Error> {
    let err = |reason: &str| Error::Url { url: url.to_string(), reason: reason.to_string() };
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| err("expected ws://HOST:PORT[/PATH] (TLS is not supported)"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(err("missing host, or credentials in the URL"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| err("unclosed [ in IPv6 address"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| err("bad port"))?,
        None => default_port,
    };
    let addr = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => {
            let mut addrs = (host, port).to_socket_addrs().map_err(|e| err(&format!("cannot resolve: {e}")))?;
            let all: Vec<SocketAddr> = addrs.by_ref().collect();
            *all.iter().find(|a| a.is_ipv4()).or(all.first()).ok_or_else(|| err("host has no address"))?
        }
    };
    let path = match path {
        "" | "/" => default_path.to_string(),
        p if p.starts_with('?') => format!("{default_path}{p}"),
        p => p.to_string(),
    };
    Ok(Target { addr, host: authority.to_string(), path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = parse("ws://127.0.0.1:3000", 80, "/ws-echo").unwrap();
        assert_eq!(
            (t.addr.to_string(), t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:3000".into(), "127.0.0.1:3000", "/ws-echo")
        );
        let t = parse("ws://[::1]:9/x?y=1", 80, "/d").unwrap();
        assert_eq!((t.addr.to_string(), t.path.as_str()), ("[::1]:9".into(), "/x?y=1"));
        let t = parse("http://127.0.0.2", 80, "/health").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert!(parse("wss://127.0.0.1:1", 80, "/").is_err());
        assert!(parse("ws://127.0.0.1:99999", 80, "/").is_err());
        assert!(parse("ws://u:p@127.0.0.1:1", 80, "/").is_err());
    }

    #[test]
    fn socketio_path_gets_the_engineio_query() {
        let mut p = Params::new(Scenario::Ack, "ws://127.0.0.1:3000");
        assert_eq!(Target::all(&p).unwrap()[0].path, "/socket.io/?EIO=4&transport=websocket");
        p.urls = vec!["ws://127.0.0.1:3000/io/?x=1".into(), "ws://127.0.0.2:3001".into()];
        let all = Target::all(&p).unwrap();
        assert_eq!(all[0].path, "/io/?x=1&EIO=4&transport=websocket");
        assert_eq!(
            (all[1].addr.to_string(), all[1].path.as_str()),
            ("127.0.0.2:3001".into(), "/socket.io/?EIO=4&transport=websocket")
        );
    }
}
