//! JWT verification: the pinned algorithm, key choice by `kid`, signature (by `jsonwebtoken`),
//! then the time, issuer and audience checks and the claim mapping (here).
//!
//! The time checks are done here, against the `now` the caller passes, instead of by the crate
//! against the system clock: that keeps this code a pure function of its inputs and lets tests
//! control time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Map, Value};

use super::config::JwtConfig;
use super::{AuthError, Identity};

/// Longest token looked at, in bytes. Real tokens are well under 4 KiB; the bound keeps a
/// hostile client from making every shard base64-decode and parse megabytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

pub(crate) struct JwtVerifier {
    cfg: JwtConfig,
    validation: Validation,
}

impl JwtVerifier {
    pub(crate) fn new(cfg: &JwtConfig) -> Self {
        let mut validation = Validation::new(cfg.algorithm.to_jsonwebtoken());
        // The crate only checks the signature and the algorithm; every claim is checked in
        // `check_claims` against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        Self { cfg: cfg.clone(), validation }
    }

    pub(crate) fn verify(&self, token: &str, now_unix_s: u64) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed(format!("token longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::Malformed("not three dot-separated parts".into()));
        };
        let header = decode_header(header)?;
        let alg = header.get("alg").and_then(Value::as_str).ok_or(malformed("header has no alg"))?;
        // Checked before anything else so that `none` and the HS256/public-key confusion are
        // refused whatever the key set holds.
        if alg != self.cfg.algorithm.as_str() {
            return Err(AuthError::WrongAlgorithm);
        }
        // RFC 7515 4.1.11: a token naming extensions the verifier does not know must be refused.
        if header.contains_key("crit") {
            return Err(malformed("unsupported crit header"));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(malformed("kid is not a string")),
        };
        let key = self.choose_key(kid)?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation)
            .map_err(|e| map_crate_error(e.into_kind()))?
            .claims;
        self.check_claims(&claims, now_unix_s)?;
        self.identity(claims)
    }

    /// A token with a `kid` needs the key of that id; one without is accepted only when there
    /// is exactly one key to try, so that adding a key to a JWK set can never make an old
    /// kid-less token verify against the wrong one by accident.
    fn choose_key(&self, kid: Option<&str>) -> Result<&DecodingKey, AuthError> {
        let keys = &self.cfg.keys.0;
        let chosen = match (kid, keys.as_slice()) {
            (_, [only]) if only.kid.is_none() => Some(only),
            (Some(kid), _) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            (None, [only]) => Some(only),
            (None, _) => None,
        };
        chosen.map(|k| &k.key).ok_or(AuthError::UnknownKey)
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), AuthError> {
        let leeway = self.cfg.leeway_s;
        let exp = numeric_date(claims, "exp")?.ok_or(AuthError::MissingClaim("exp"))?;
        // RFC 7519 4.1.4: expired "on or after" exp.
        if now >= exp.saturating_add(leeway) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = numeric_date(claims, "nbf")? {
            if now.saturating_add(leeway) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        if let Some(issuer) = &self.cfg.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err(AuthError::BadIssuer);
            }
        }
        if let Some(audience) = &self.cfg.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == audience,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience.as_str())),
                _ => false,
            };
            if !ok {
                return Err(AuthError::BadAudience);
            }
        }
        Ok(())
    }

    fn identity(&self, claims: Map<String, Value>) -> Result<Identity, AuthError> {
        let user_id = match claims.get(&self.cfg.user_claim) {
            None | Some(Value::Null) => return Err(AuthError::MissingClaim("user id")),
            Some(Value::String(s)) if !s.is_empty() => s.as_str().into(),
            Some(_) => return Err(AuthError::InvalidClaim("user id")),
        };
        let tenant = match claims.get(&self.cfg.tenant_claim) {
            None | Some(Value::Null) => self.cfg.default_tenant.as_str().into(),
            Some(Value::String(s)) if !s.is_empty() => s.as_str().into(),
            Some(_) => return Err(AuthError::InvalidClaim("tenant")),
        };
        let roles = match claims.get(&self.cfg.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|r| r.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(AuthError::InvalidClaim("roles"))?,
            Some(_) => return Err(AuthError::InvalidClaim("roles")),
        };
        Ok(Identity { tenant, user_id, roles, claims })
    }
}

fn malformed(msg: &str) -> AuthError {
    AuthError::Malformed(msg.into())
}

fn decode_header(b64: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| malformed("header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| malformed("header is not a JSON object"))
}

/// A NumericDate claim (RFC 7519 2): seconds, possibly fractional; fractions are truncated.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(f)) if f >= 0.0 && f.is_finite() => Ok(Some(f as u64)),
            _ => Err(AuthError::InvalidClaim(name)),
        },
        Some(_) => Err(AuthError::InvalidClaim(name)),
    }
}

fn map_crate_error(kind: ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthError::WrongAlgorithm,
        ErrorKind::Base64(_) => malformed("not base64url"),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => malformed("payload is not a JSON object"),
        other => AuthError::Malformed(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::config::JwtAlgorithm;

    /// The name checked against the header's `alg` must be the crate's algorithm of that name.
    #[test]
    fn algorithm_names_agree_with_the_crate() {
        for alg in [JwtAlgorithm::HS256, JwtAlgorithm::RS256, JwtAlgorithm::ES256, JwtAlgorithm::EdDSA] {
            assert_eq!(format!("{:?}", alg.to_jsonwebtoken()), alg.as_str());
        }
    }

    #[test]
    fn numeric_dates() {
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"a": 10, "b": 10.9, "c": -1, "d": "10", "e": null}"#).unwrap();
        assert_eq!(numeric_date(&claims, "a"), Ok(Some(10)));
        assert_eq!(numeric_date(&claims, "b"), Ok(Some(10)));
        assert_eq!(numeric_date(&claims, "c"), Err(AuthError::InvalidClaim("c")));
        assert_eq!(numeric_date(&claims, "d"), Err(AuthError::InvalidClaim("d")));
        assert_eq!(numeric_date(&claims, "e"), Err(AuthError::InvalidClaim("e")));
        assert_eq!(numeric_date(&claims, "z"), Ok(None));
    }
}
