//! The token a connection presents on its upgrade, as `Authorization: Bearer <token>`: none by
//! default (an `anonymous` server gives every session a fresh user), the `--token` given (with
//! `{i}` replaced by the connection's index, so a `static` server's list `t-0`, `t-1`, ... gives
//! each connection its own user), or an HS256 JWT minted per connection with `--jwt-secret`
//! (`sub` = `lg-<i>`, for a `jwt` server with that secret).
//!
//! A header rather than `?token=`: it needs no URL escaping and stays out of access logs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::clock::unix_ms;
use crate::params::Params;

/// How long a minted token is valid: longer than any run (at most 600 s of measurement plus
/// set-up and drain), so none expires half way.
const JWT_LIFETIME_S: u64 = 24 * 3600;

/// The token of connection `index` (unique over the run's connections and worker processes).
pub fn for_connection(p: &Params, index: usize) -> Option<String> {
    if let Some(secret) = &p.jwt_secret {
        let now = unix_ms() / 1000;
        let claims = format!(r#"{{"sub":"lg-{index}","iat":{now},"exp":{}}}"#, now + JWT_LIFETIME_S);
        return Some(hs256(secret.as_bytes(), &claims));
    }
    p.token.as_ref().map(|t| t.replace("{i}", &index.to_string()))
}

/// Whether every connection presents the same token, and is therefore the same user (see
/// [`Params::shares_token`], which validation uses).
pub fn shared(p: &Params) -> bool {
    p.shares_token()
}

/// A compact JWS: `base64url(header).base64url(claims).base64url(HMAC-SHA256)`.
pub fn hs256(secret: &[u8], claims_json: &str) -> String {
    let mut out = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(claims_json));
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return out };
    mac.update(out.as_bytes());
    let sig = mac.finalize().into_bytes();
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(sig));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Scenario;

    #[test]
    fn hs256_matches_rfc_7515_appendix_a1() {
        // RFC 7515 A.1's key and payload, with our header: the signature is checked against an
        // independent HMAC of the same signing input.
        let key = URL_SAFE_NO_PAD
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let claims = r#"{"iss":"joe","exp":1300819380,"http://example.com/is_root":true}"#;
        let jwt = hs256(&key, claims);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[1]).unwrap(), claims.as_bytes());
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
    }

    #[test]
    fn tokens_per_connection() {
        let mut p = Params::new(Scenario::Chat, "ws://127.0.0.1:1");
        assert_eq!(for_connection(&p, 3), None);
        p.token = Some("t-{i}".into());
        assert_eq!(for_connection(&p, 3).as_deref(), Some("t-3"));
        assert!(!shared(&p));
        p.token = Some("same".into());
        assert_eq!(for_connection(&p, 3).as_deref(), Some("same"));
        assert!(shared(&p));
        p.token = None;
        p.jwt_secret = Some("s3cret".into());
        let jwt = for_connection(&p, 5).unwrap();
        let claims = URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(v["sub"], "lg-5");
        assert!(v["exp"].as_u64().unwrap() > v["iat"].as_u64().unwrap());
    }
}
