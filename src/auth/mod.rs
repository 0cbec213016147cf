//! Authentication: who a client is ([`Authenticator`]) and whether its web origin may connect
//! ([`OriginPolicy`]).
//!
//! Pure code: a token (and the caller's clock) in, an [`Identity`] or an [`AuthError`] out;
//! the per-shard [`Gate`] applies it to a request head and counts refusals.
//! Nothing here knows of sockets or runtimes; the only I/O is reading key files in
//! [`config::resolve`] at start-up. An [`Authenticator`] is built once and shared by every shard
//! behind an `Arc`: it is immutable, so sharing it costs no lock on the connection path.
//!
//! Modes ([`config::AuthMode`]): `anonymous` (everyone gets a fresh anonymous identity),
//! `static` (a fixed token list) and `jwt` (signed tokens, one pinned algorithm). See
//! `docs/auth.md` for the operator's view.

pub mod config;
mod gate;
mod jwt;
pub mod origin;

use std::sync::Arc;

use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

pub use config::{resolve, AuthConfig, AuthConfigError, AuthMode, AuthSection, JwtAlgorithm, JwtSection, StaticToken};
pub use gate::Gate;
pub use jwt::MAX_TOKEN_BYTES;
pub use origin::{OriginPattern, OriginPolicy};

use crate::http::parse::RequestHead;
use config::StaticEntry;
use jwt::JwtVerifier;

/// Who a connection belongs to, as established once at connect time.
///
/// `tenant` and `user_id` are `Arc<str>` because they are copied into every session, room
/// membership and presence entry of the connection; cloning them must not allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: Arc<str>,
    pub user_id: Arc<str>,
    pub roles: Vec<String>,
    /// Every claim of the token (empty for anonymous and static identities), for application
    /// code that needs more than the mapped fields.
    pub claims: Map<String, Value>,
}

impl Identity {
    /// A fresh identity for an unauthenticated client: tenant `default`, user id `anon-` and 16
    /// random hex digits (64 bits, so two anonymous clients do not collide in practice), no
    /// roles.
    pub fn anonymous() -> Self {
        Self {
            tenant: "default".into(),
            user_id: format!("anon-{:016x}", rand::random::<u64>()).into(),
            roles: Vec::new(),
            claims: Map::new(),
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Why a client was not authenticated. Every variant refuses the connection: a plain WebSocket
/// upgrade gets [`AuthError::http_status`] with `{"error": code, "message": ...}`, a Socket.IO
/// client a CONNECT_ERROR carrying [`AuthError::code`] (`docs/auth.md`).
///
/// Messages say what is wrong with the token without echoing it, since they are sent back to
/// the client and may be logged.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("bad token signature")]
    BadSignature,
    #[error("token signed with an algorithm this server does not accept")]
    WrongAlgorithm,
    #[error("token issuer not accepted")]
    BadIssuer,
    #[error("token audience not accepted")]
    BadAudience,
    #[error("token signed with an unknown key")]
    UnknownKey,
    #[error("unknown token")]
    UnknownToken,
    /// The claim's role: `"exp"`, or `"user id"` for the configured `auth.jwt.user_claim`.
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    /// The claim's role (`"exp"`, `"nbf"`, `"user id"`, `"tenant"`, `"roles"`) whose value has
    /// the wrong type.
    #[error("token {0} claim has the wrong type")]
    InvalidClaim(&'static str),
    /// The node was assembled without an authenticator on this shard: fail closed.
    #[error("this node cannot authenticate clients right now")]
    Unavailable,
}

impl AuthError {
    /// A stable snake_case code for protocol error messages; clients may match on it, so a code
    /// never changes meaning once released.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed(_) => "token_malformed",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::BadSignature => "token_bad_signature",
            AuthError::WrongAlgorithm => "token_wrong_algorithm",
            AuthError::BadIssuer => "token_bad_issuer",
            AuthError::BadAudience => "token_bad_audience",
            AuthError::UnknownKey => "token_unknown_key",
            AuthError::UnknownToken => "token_unknown",
            AuthError::MissingClaim(_) => "token_missing_claim",
            AuthError::InvalidClaim(_) => "token_invalid_claim",
            AuthError::Unavailable => "auth_unavailable",
        }
    }

    /// The HTTP status that refuses a WebSocket upgrade for this error: 401, since the client
    /// may retry with another token, but 503 when the node cannot authenticate anyone.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Unavailable => 503,
            _ => 401,
        }
    }
}

enum Mode {
    Anonymous,
    Static(Vec<StaticEntry>),
    Jwt(Box<JwtVerifier>),
}

/// Turns the token a client presents into an [`Identity`]. Built once from the resolved
/// config; immutable, `Send + Sync`, shared by all shards through an `Arc`.
pub struct Authenticator {
    mode: Mode,
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Self {
        let mode = match (cfg.mode, &cfg.jwt) {
            (AuthMode::Anonymous, _) => Mode::Anonymous,
            (AuthMode::Static, _) => Mode::Static(cfg.static_tokens.0.clone()),
            (AuthMode::Jwt, Some(jwt)) => Mode::Jwt(Box::new(JwtVerifier::new(jwt))),
            // `resolve` always fills `jwt` in jwt mode; a hand-built config without it gets a
            // verifier with no keys, which refuses every token (fail closed).
            (AuthMode::Jwt, None) => Mode::Static(Vec::new()),
        };
        Self { mode }
    }

    /// `token` is the bearer token if the client gave one; an empty one counts as none.
    /// `now_unix_s` is the caller's clock, against which `exp` and `nbf` are checked.
    pub fn authenticate(&self, token: Option<&str>, now_unix_s: u64) -> Result<Identity, AuthError> {
        let token = token.filter(|t| !t.is_empty());
        match &self.mode {
            Mode::Anonymous => Ok(Identity::anonymous()),
            Mode::Static(entries) => authenticate_static(entries, token.ok_or(AuthError::Missing)?),
            Mode::Jwt(verifier) => verifier.verify(token.ok_or(AuthError::Missing)?, now_unix_s),
        }
    }

    /// Whether a client must present a token: false only in anonymous mode. Lets transports
    /// skip waiting for credentials they would ignore.
    pub fn requires_token(&self) -> bool {
        !matches!(self.mode, Mode::Anonymous)
    }
}

/// Compares the token's digest with every entry's, without stopping at a match, so the time
/// taken says nothing about which entry matched or how close a guess was.
fn authenticate_static(entries: &[StaticEntry], token: &str) -> Result<Identity, AuthError> {
    let digest = config::token_digest(token);
    let mut found = None;
    for entry in entries {
        if bool::from(entry.digest.ct_eq(&digest)) {
            found = Some(entry);
        }
    }
    let entry = found.ok_or(AuthError::UnknownToken)?;
    Ok(Identity {
        tenant: entry.tenant.clone(),
        user_id: entry.user_id.clone(),
        roles: entry.roles.clone(),
        claims: Map::new(),
    })
}

/// Seconds since the Unix epoch: the `now` that [`Authenticator::authenticate`] takes.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The token of an HTTP request: the `token` query parameter (percent-decoded) first, else
/// `Authorization: Bearer <t>` (scheme case-insensitive). Browsers cannot set headers on a
/// WebSocket upgrade, hence the query parameter; it wins so that a page's explicit token is
/// not overridden by a header a proxy added. Empty values count as absent.
pub fn token_from_request(head: &RequestHead) -> Option<String> {
    if let Some(t) = head.query_param("token").filter(|t| !t.is_empty()) {
        return Some(t);
    }
    let value = head.header("authorization")?.trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

#[cfg(test)]
mod tests;
