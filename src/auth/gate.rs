//! The gate every protocol passes at connect time: the origin check, then who the token says
//! the client is. One per shard (a service the assembler registers), over the node's shared
//! [`Authenticator`] and [`OriginPolicy`]; refusals are counted in the shard's metrics.

use std::sync::Arc;
use std::time::Duration;

use super::{token_from_request, unix_now, AuthError, Authenticator, Identity, OriginPolicy};
use crate::http::parse::RequestHead;
use crate::http::Response;
use crate::metrics::{self, ShardStats};

/// The connect-time checks of one shard.
pub struct Gate {
    authenticator: Arc<Authenticator>,
    origins: Arc<OriginPolicy>,
    /// `limits.max_name_bytes`: user ids and tenants become room and routing keys.
    max_name_bytes: usize,
    /// `auth.timeout_ms`: how long a protocol that asks for credentials after the upgrade
    /// (Socket.IO's CONNECT) waits for them.
    pub timeout: Duration,
    stats: Arc<ShardStats>,
}

impl Gate {
    pub fn new(
        authenticator: Arc<Authenticator>,
        origins: Arc<OriginPolicy>,
        max_name_bytes: usize,
        timeout: Duration,
        stats: Arc<ShardStats>,
    ) -> Self {
        Self { authenticator, origins, max_name_bytes, timeout, stats }
    }

    /// Whether a client must present a token (false only in anonymous mode).
    pub fn requires_token(&self) -> bool {
        self.authenticator.requires_token()
    }

    /// Who `token` says the client is, for every protocol: the authenticator's answer, with the
    /// user id and tenant held to the name rules (`limits.max_name_bytes`, no control
    /// characters), since they become room keys and routing keys. A refusal is counted in
    /// `imks_auth_failures_total`.
    pub fn identify(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let max = self.max_name_bytes;
        let identity = self.authenticator.authenticate(token, unix_now()).and_then(|i| {
            if crate::names::validate_name("user", &i.user_id, max).is_err() {
                Err(AuthError::InvalidClaim("user id"))
            } else if crate::names::validate_name("tenant", &i.tenant, max).is_err() {
                Err(AuthError::InvalidClaim("tenant"))
            } else {
                Ok(i)
            }
        });
        if identity.is_err() {
            metrics::add(&self.stats.auth_failures, 1);
        }
        identity
    }

    /// Refuses, with 403, a request whose `Origin` the policy does not allow.
    pub fn check_origin(&self, head: &RequestHead) -> Result<(), Response> {
        if self.origins.allows(head.header("origin"), head.header("host")) {
            return Ok(());
        }
        metrics::add(&self.stats.origin_refused, 1);
        Err(Response::refusal(403, "origin_not_allowed", "this Origin may not connect"))
    }

    /// Origin (403), then a token that must identify the client (401).
    pub fn check(&self, head: &RequestHead) -> Result<Identity, Response> {
        self.check_origin(head)?;
        let token = token_from_request(head);
        self.identify(token.as_deref()).map_err(|e| Response::refusal(e.http_status(), e.code(), &e.to_string()))
    }

    /// Decides a handshake whose protocol may ask for a token later (Engine.IO, for
    /// Socket.IO's CONNECT): a refused origin gets 403, a token that is given but does not
    /// identify the client 401, and no token is no error.
    pub fn admit(&self, head: &RequestHead) -> Result<Option<Identity>, Response> {
        self.check_origin(head)?;
        let Some(token) = token_from_request(head) else { return Ok(None) };
        self.identify(Some(&token)).map(Some).map_err(|e| Response::refusal(e.http_status(), e.code(), &e.to_string()))
    }
}
