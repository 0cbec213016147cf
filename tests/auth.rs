//! Authentication end to end: JWTs of each kind at the `/ws` upgrade (401 before any session),
//! the key-confusion and `alg: none` attacks, and Socket.IO's CONNECT_ERROR, handshake 401 and
//! auth timeout, over raw frames.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::sio_text as text;
use common::*;
use imks::config::file::FileConfig;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::Message;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth");
const SECRET: &str = "an HS256 test secret that is long enough";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn jwt_node(algorithm: &str, key: &str) -> (imks::Node, SocketAddr) {
    start("io_uring", 2, |f: &mut FileConfig| {
        f.auth = toml::from_str(&format!(
            "mode = \"jwt\"\n[jwt]\nalgorithm = \"{algorithm}\"\nissuer = \"imks-tests\"\naudience = \"chat\"\nleeway_s = 5\n{key}\n"
        ))
        .unwrap();
    })
}

fn claims(user: &str, exp_offset: i64) -> Value {
    let t = now() as i64;
    json!({"sub": user, "tenant": "acme", "iss": "imks-tests", "aud": "chat", "exp": t + exp_offset, "iat": t})
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// The status of a `/ws` upgrade carrying `token`, and the body when refused.
fn upgrade(addr: SocketAddr, token: &str) -> (u16, Value) {
    let mut s = connect(addr);
    use std::io::Write;
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let (status, _, body) = read_response(&mut s);
    let body = if status == 101 { Value::Null } else { serde_json::from_slice(&body).unwrap() };
    (status, body)
}

fn refused_with(addr: SocketAddr, token: &str, code: &str) {
    let (status, body) = upgrade(addr, token);
    assert_eq!(status, 401, "{token}: {body}");
    assert_eq!(body["error"], code, "{body}");
}

#[test]
fn hs256_tokens_are_checked_for_expiry_signature_and_algorithm() {
    let (_node, addr) = jwt_node("HS256", &format!("secret = \"{SECRET}\""));
    let good = hs256(&claims("alice", 60), SECRET.as_bytes());
    assert_eq!(upgrade(addr, &good).0, 101);
    let mut c = ws(addr, &format!("/ws?token={good}"));
    let hello: Value = serde_json::from_str(c.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!((hello["data"]["userId"].as_str(), hello["data"]["tenant"].as_str()), (Some("alice"), Some("acme")));

    refused_with(addr, &hs256(&claims("alice", -60), SECRET.as_bytes()), "token_expired");
    // Within the configured clock skew an expired token still passes.
    assert_eq!(upgrade(addr, &hs256(&claims("alice", -2), SECRET.as_bytes())).0, 101);
    refused_with(addr, &hs256(&claims("alice", 60), b"another secret entirely, also long"), "token_bad_signature");
    let mut wrong_aud = claims("alice", 60);
    wrong_aud["aud"] = json!("billing");
    refused_with(addr, &hs256(&wrong_aud, SECRET.as_bytes()), "token_bad_audience");
    let mut wrong_iss = claims("alice", 60);
    wrong_iss["iss"] = json!("someone-else");
    refused_with(addr, &hs256(&wrong_iss, SECRET.as_bytes()), "token_bad_issuer");

    // Tampered: the payload says bob, the signature is alice's.
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged_payload = b64.encode(claims("bob", 60).to_string());
    refused_with(addr, &format!("{}.{forged_payload}.{}", parts[0], parts[2]), "token_bad_signature");

    // `alg: none`, unsigned.
    let none_header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let (status, body) = upgrade(addr, &format!("{none_header}.{}.", parts[1]));
    assert_eq!(status, 401, "{body}");
    assert!(matches!(body["error"].as_str(), Some("token_wrong_algorithm" | "token_malformed")), "{body}");

    refused_with(addr, "not-a-jwt", "token_malformed");
    // A user id that is no valid name (a control character) is refused for every protocol.
    refused_with(addr, &hs256(&claims("bad\u{1}user", 60), SECRET.as_bytes()), "token_invalid_claim");
    let mut c = ws(addr, "/socket.io/?EIO=4&transport=websocket");
    assert!(text(&mut c).unwrap().starts_with("0{"));
    let bad = hs256(&claims("bad\u{1}user", 60), SECRET.as_bytes());
    c.send(Message::text(format!(r#"40{{"token":"{bad}"}}"#))).unwrap();
    let body: Value = serde_json::from_str(text(&mut c).unwrap().strip_prefix("44").unwrap()).unwrap();
    assert_eq!(body["message"], "token_invalid_claim");
    let (status, body) = {
        let mut s = connect(addr);
        use std::io::Write;
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let (status, head, body) = read_response(&mut s);
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    assert_eq!((status, body["error"].as_str()), (401, Some("token_missing")));
}

#[test]
fn asymmetric_keys_and_the_key_confusion_attack() {
    let rsa_pub = format!("{FIXTURES}/rsa_public.pem");
    let (_rs, addr) = jwt_node("RS256", &format!("public_key_file = \"{rsa_pub}\""));
    let private = std::fs::read(format!("{FIXTURES}/rsa_private.pem")).unwrap();
    let good =
        encode(&Header::new(Algorithm::RS256), &claims("alice", 60), &EncodingKey::from_rsa_pem(&private).unwrap())
            .unwrap();
    assert_eq!(upgrade(addr, &good).0, 101);
    let other = std::fs::read(format!("{FIXTURES}/rsa2_private.pem")).unwrap();
    let forged =
        encode(&Header::new(Algorithm::RS256), &claims("alice", 60), &EncodingKey::from_rsa_pem(&other).unwrap())
            .unwrap();
    refused_with(addr, &forged, "token_bad_signature");
    // HS256 "signed" with the server's public key: refused because the algorithm is pinned.
    let public_pem = std::fs::read(&rsa_pub).unwrap();
    refused_with(addr, &hs256(&claims("alice", 60), &public_pem), "token_wrong_algorithm");

    let ed_pub = format!("{FIXTURES}/ed25519_public.pem");
    let (_ed, ed) = jwt_node("EdDSA", &format!("public_key_file = \"{ed_pub}\""));
    let ed_private = std::fs::read(format!("{FIXTURES}/ed25519_private.pem")).unwrap();
    let token =
        encode(&Header::new(Algorithm::EdDSA), &claims("bob", 60), &EncodingKey::from_ed_pem(&ed_private).unwrap())
            .unwrap();
    assert_eq!(upgrade(ed, &token).0, 101);

    let jwks = format!("{FIXTURES}/jwks.json");
    let (_es, es) = jwt_node("ES256", &format!("jwks_file = \"{jwks}\""));
    let ec_private = std::fs::read(format!("{FIXTURES}/ec_private.pem")).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".into());
    let token = encode(&header, &claims("carol", 60), &EncodingKey::from_ec_pem(&ec_private).unwrap()).unwrap();
    assert_eq!(upgrade(es, &token).0, 101);
    header.kid = Some("no-such-key".into());
    let token = encode(&header, &claims("carol", 60), &EncodingKey::from_ec_pem(&ec_private).unwrap()).unwrap();
    refused_with(es, &token, "token_unknown_key");
}

fn static_node(tweak: impl FnOnce(&mut FileConfig)) -> (imks::Node, SocketAddr) {
    start("io_uring", 2, |f| {
        f.auth = toml::from_str(
            "mode = \"static\"\ntimeout_ms = 300\nstatic_tokens = [{ token = \"t-alice\", tenant = \"acme\", user_id = \"alice\" }]\n",
        )
        .unwrap();
        tweak(f);
    })
}

#[test]
fn socketio_refuses_bad_tokens_with_connect_error_and_a_bad_handshake_token_with_401() {
    let (_node, addr) = static_node(|_| {});
    let mut c = ws(addr, "/socket.io/?EIO=4&transport=websocket");
    assert!(text(&mut c).unwrap().starts_with("0{"));
    c.send(Message::text(r#"40{"token":"wrong"}"#)).unwrap();
    let refusal = text(&mut c).unwrap();
    let body: Value = serde_json::from_str(refusal.strip_prefix("44").unwrap()).unwrap();
    assert_eq!(
        (body["message"].as_str(), body["data"]["code"].as_str()),
        (Some("token_unknown"), Some("token_unknown"))
    );
    c.send(Message::text("40")).unwrap();
    let body: Value = serde_json::from_str(text(&mut c).unwrap().strip_prefix("44").unwrap()).unwrap();
    assert_eq!(body["message"], "token_missing");
    c.send(Message::text(r#"40{"token":"t-alice"}"#)).unwrap();
    assert!(text(&mut c).unwrap().starts_with("40{\"sid\":"), "the right token connects");

    // A token in the handshake itself is checked before any session exists.
    let (status, _, body) = get(addr, "/socket.io/?EIO=4&transport=polling&token=wrong");
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = get(addr, "/socket.io/?EIO=4&transport=polling&token=t-alice");
    assert_eq!(status, 200);
    assert!(body.starts_with(b"0{"));
    // ... and then stands for the CONNECT that carries none.
    let mut c = ws(addr, "/socket.io/?EIO=4&transport=websocket&token=t-alice");
    assert!(text(&mut c).unwrap().starts_with("0{"));
    c.send(Message::text("40")).unwrap();
    assert!(text(&mut c).unwrap().starts_with("40{\"sid\":"));
    // A foreign Origin is refused at the handshake.
    let (status, head, _) = http(
        addr,
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 403);
    assert!(!head.contains("Access-Control-Allow-Origin"), "a refused page may not read the answer: {head}");
}

#[test]
fn socketio_connections_that_do_not_authenticate_in_time_are_closed() {
    let (_node, addr) = static_node(|_| {});
    let mut c = ws(addr, "/socket.io/?EIO=4&transport=websocket");
    assert!(text(&mut c).unwrap().starts_with("0{"));
    let started = Instant::now();
    assert!(text(&mut c).is_none(), "closed without a CONNECT");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "{waited:?}");
}

#[test]
fn socketio_rate_limit_sends_an_error_then_closes_with_1008() {
    let (_node, addr) = static_node(|f| {
        f.limits.message_rate = 10;
        f.limits.message_burst = 10;
    });
    let mut c = ws(addr, "/socket.io/?EIO=4&transport=websocket&token=t-alice");
    assert!(text(&mut c).unwrap().starts_with("0{"));
    c.send(Message::text("40")).unwrap();
    assert!(text(&mut c).unwrap().starts_with("40{"));
    for i in 0..30 {
        if c.send(Message::text(format!(r#"42["typing:start",{{"channel_id":"c{i}"}}]"#))).is_err() {
            break;
        }
    }
    let mut saw_error = false;
    let code = loop {
        match c.read() {
            Ok(Message::Text(t)) if t.starts_with(r#"42["error""#) => {
                assert!(t.contains("rate_limited"), "{t}");
                saw_error = true;
            }
            Ok(Message::Text(t)) if t.as_str() == "2" => {}
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert!(saw_error);
    assert_eq!(code, Some(1008));
}
