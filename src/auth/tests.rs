//! Tests of [`Authenticator`] and [`token_from_request`], with tokens signed by the test-only
//! keys in `tests/fixtures/auth/`.

use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::config::{resolve, AuthMode, AuthSection, JwtAlgorithm, JwtSection, StaticToken};
use super::*;
use crate::http::parse::{parse_head, Limits, Parsed};

const NOW: u64 = 1_700_000_000;
const SECRET: &str = "a-test-secret-of-reasonable-length";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn private_key(alg: JwtAlgorithm) -> EncodingKey {
    match alg {
        JwtAlgorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        JwtAlgorithm::RS256 => EncodingKey::from_rsa_pem(&read("rsa_private.pem")).unwrap(),
        JwtAlgorithm::ES256 => EncodingKey::from_ec_pem(&read("ec_private.pem")).unwrap(),
        JwtAlgorithm::EdDSA => EncodingKey::from_ed_pem(&read("ed25519_private.pem")).unwrap(),
    }
}

fn sign_with(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn sign(alg: JwtAlgorithm, claims: &Value) -> String {
    sign_with(alg.to_jsonwebtoken(), &private_key(alg), None, claims)
}

fn claims() -> Value {
    json!({"sub": "user-1", "exp": NOW + 600, "tenant": "acme", "roles": ["admin", "dev"], "plan": "gold"})
}

fn jwt_auth(alg: JwtAlgorithm, tweak: impl FnOnce(&mut JwtSection)) -> Authenticator {
    let mut jwt = JwtSection { algorithm: alg, ..JwtSection::default() };
    match alg {
        JwtAlgorithm::HS256 => jwt.secret = Some(SECRET.into()),
        JwtAlgorithm::RS256 => jwt.public_key_file = Some(fixture("rsa_public.pem")),
        JwtAlgorithm::ES256 => jwt.public_key_file = Some(fixture("ec_public.pem")),
        JwtAlgorithm::EdDSA => jwt.public_key_file = Some(fixture("ed25519_public.pem")),
    }
    tweak(&mut jwt);
    let section = AuthSection { mode: AuthMode::Jwt, jwt, ..AuthSection::default() };
    Authenticator::new(&resolve(&section).unwrap())
}

fn jwks_auth(alg: JwtAlgorithm, jwks: PathBuf) -> Authenticator {
    jwt_auth(alg, |j| {
        j.public_key_file = None;
        j.jwks_file = Some(jwks);
    })
}

const ALL: [JwtAlgorithm; 4] = [JwtAlgorithm::HS256, JwtAlgorithm::RS256, JwtAlgorithm::ES256, JwtAlgorithm::EdDSA];

#[test]
fn authenticator_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Authenticator>();
    shared::<OriginPolicy>();
    shared::<Identity>();
}

#[test]
fn each_algorithm_accepts_a_valid_token() {
    for alg in ALL {
        let id = jwt_auth(alg, |_| {}).authenticate(Some(&sign(alg, &claims())), NOW).unwrap();
        assert_eq!(&*id.user_id, "user-1", "{alg:?}");
        assert_eq!(&*id.tenant, "acme");
        assert_eq!(id.roles, ["admin", "dev"]);
        assert!(id.has_role("admin") && !id.has_role("root"));
        assert_eq!(id.claims["plan"], "gold", "all claims are kept");
    }
}

#[test]
fn each_algorithm_refuses_a_token_of_another() {
    for pinned in ALL {
        let auth = jwt_auth(pinned, |_| {});
        for used in ALL.into_iter().filter(|&a| a != pinned) {
            assert_eq!(auth.authenticate(Some(&sign(used, &claims())), NOW), Err(AuthError::WrongAlgorithm));
        }
    }
}

#[test]
fn expiry_with_leeway() {
    let auth = jwt_auth(JwtAlgorithm::HS256, |j| j.leeway_s = 30);
    let at = |exp: u64| auth.authenticate(Some(&sign(JwtAlgorithm::HS256, &json!({"sub": "u", "exp": exp}))), NOW);
    assert!(at(NOW - 10).is_ok(), "expired 10 s ago, within the 30 s leeway");
    assert!(at(NOW - 29).is_ok());
    assert_eq!(at(NOW - 30), Err(AuthError::Expired));
    assert_eq!(at(NOW - 3600), Err(AuthError::Expired));

    let strict = jwt_auth(JwtAlgorithm::HS256, |j| j.leeway_s = 0);
    let at = |exp: u64| strict.authenticate(Some(&sign(JwtAlgorithm::HS256, &json!({"sub": "u", "exp": exp}))), NOW);
    assert_eq!(at(NOW), Err(AuthError::Expired), "expired on exp itself");
    assert!(at(NOW + 1).is_ok());
    assert_eq!(AuthError::Expired.code(), "token_expired");
}

#[test]
fn exp_is_required_and_must_be_a_number() {
    let auth = jwt_auth(JwtAlgorithm::HS256, |_| {});
    let token = sign(JwtAlgorithm::HS256, &json!({"sub": "u"}));
    assert_eq!(auth.authenticate(Some(&token), NOW), Err(AuthError::MissingClaim("exp")));
    let token = sign(JwtAlgorithm::HS256, &json!({"sub": "u", "exp": "tomorrow"}));
    assert_eq!(auth.authenticate(Some(&token), NOW), Err(AuthError::InvalidClaim("exp")));
}

#[test]
fn not_before() {
    let auth = jwt_auth(JwtAlgorithm::HS256, |j| j.leeway_s = 30);
    let at = |nbf: u64| {
        auth.authenticate(Some(&sign(JwtAlgorithm::HS256, &json!({"sub": "u", "exp": NOW + 600, "nbf": nbf}))), NOW)
    };
    assert_eq!(at(NOW + 100), Err(AuthError::NotYetValid));
    assert_eq!(at(NOW + 31), Err(AuthError::NotYetValid));
    assert!(at(NOW + 30).is_ok(), "within the leeway");
    assert!(at(NOW - 100).is_ok());
}

#[test]
fn issuer() {
    let auth = jwt_auth(JwtAlgorithm::RS256, |j| j.issuer = Some("https://id.example.com".into()));
    let with = |iss: Value| {
        let mut c = claims();
        c["iss"] = iss;
        auth.authenticate(Some(&sign(JwtAlgorithm::RS256, &c)), NOW)
    };
    assert!(with(json!("https://id.example.com")).is_ok());
    assert_eq!(with(json!("https://evil.example.com")), Err(AuthError::BadIssuer));
    assert_eq!(with(json!(["https://id.example.com"])), Err(AuthError::BadIssuer));
    assert_eq!(with(Value::Null), Err(AuthError::BadIssuer));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(auth.authenticate(Some(&sign(JwtAlgorithm::RS256, &c)), NOW), Err(AuthError::BadIssuer));
    // Unchecked when not configured.
    let open = jwt_auth(JwtAlgorithm::RS256, |_| {});
    let mut c = claims();
    c["iss"] = json!("anyone");
    assert!(open.authenticate(Some(&sign(JwtAlgorithm::RS256, &c)), NOW).is_ok());
}

#[test]
fn audience() {
    let auth = jwt_auth(JwtAlgorithm::ES256, |j| j.audience = Some("imks".into()));
    let with = |aud: Option<Value>| {
        let mut c = claims();
        if let Some(aud) = aud {
            c["aud"] = aud;
        }
        auth.authenticate(Some(&sign(JwtAlgorithm::ES256, &c)), NOW)
    };
    assert!(with(Some(json!("imks"))).is_ok());
    assert!(with(Some(json!(["other", "imks"]))).is_ok());
    assert_eq!(with(Some(json!("other"))), Err(AuthError::BadAudience));
    assert_eq!(with(Some(json!(["other"]))), Err(AuthError::BadAudience));
    assert_eq!(with(Some(json!("IMKS"))), Err(AuthError::BadAudience));
    assert_eq!(with(None), Err(AuthError::BadAudience));
}

/// Swaps the payload of a signed token for another one, keeping header and signature.
fn with_payload(token: &str, payload: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(payload.to_string()), parts[2])
}

#[test]
fn tampered_payload_fails_the_signature() {
    for alg in ALL {
        let auth = jwt_auth(alg, |_| {});
        let token = sign(alg, &claims());
        let mut forged = claims();
        forged["roles"] = json!(["admin", "dev", "root"]);
        assert_eq!(
            auth.authenticate(Some(&with_payload(&token, &forged)), NOW),
            Err(AuthError::BadSignature),
            "{alg:?}"
        );
        // Flipping one signature character also fails.
        let mut bytes = token.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let token = String::from_utf8(bytes).unwrap();
        assert!(
            matches!(auth.authenticate(Some(&token), NOW), Err(AuthError::BadSignature | AuthError::Malformed(_))),
            "{alg:?}"
        );
    }
}

#[test]
fn token_signed_with_another_key_is_refused() {
    let other_rsa = EncodingKey::from_rsa_pem(&read("rsa2_private.pem")).unwrap();
    let token = sign_with(Algorithm::RS256, &other_rsa, None, &claims());
    assert_eq!(jwt_auth(JwtAlgorithm::RS256, |_| {}).authenticate(Some(&token), NOW), Err(AuthError::BadSignature));

    let token = sign_with(Algorithm::HS256, &EncodingKey::from_secret(b"another secret"), None, &claims());
    assert_eq!(jwt_auth(JwtAlgorithm::HS256, |_| {}).authenticate(Some(&token), NOW), Err(AuthError::BadSignature));
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn alg_none_is_refused() {
    for header in [json!({"alg": "none"}), json!({"alg": "none", "typ": "JWT"}), json!({"alg": "None"})] {
        let token = format!("{}.{}.", b64(&header), b64(&claims()));
        for alg in ALL {
            assert_eq!(jwt_auth(alg, |_| {}).authenticate(Some(&token), NOW), Err(AuthError::WrongAlgorithm));
        }
    }
}

/// The classic key confusion: an attacker signs with HS256 using the server's RSA *public*
/// key as the HMAC secret, hoping the server verifies with "its key" and the token's `alg`.
#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let public_pem = read("rsa_public.pem");
    let token = sign_with(Algorithm::HS256, &EncodingKey::from_secret(&public_pem), None, &claims());
    assert_eq!(jwt_auth(JwtAlgorithm::RS256, |_| {}).authenticate(Some(&token), NOW), Err(AuthError::WrongAlgorithm));
    let token = sign_with(Algorithm::HS256, &EncodingKey::from_secret(&public_pem), Some("rsa-1"), &claims());
    let jwks = jwks_auth(JwtAlgorithm::RS256, fixture("jwks.json"));
    assert_eq!(jwks.authenticate(Some(&token), NOW), Err(AuthError::WrongAlgorithm));
}

#[test]
fn crit_header_is_refused() {
    let header = json!({"alg": "HS256", "crit": ["exp"]});
    let token = format!("{}.{}.sig", b64(&header), b64(&claims()));
    let r = jwt_auth(JwtAlgorithm::HS256, |_| {}).authenticate(Some(&token), NOW);
    assert!(matches!(r, Err(AuthError::Malformed(ref m)) if m.contains("crit")), "{r:?}");
}

#[test]
fn malformed_tokens() {
    let auth = jwt_auth(JwtAlgorithm::HS256, |_| {});
    assert_eq!(auth.authenticate(None, NOW), Err(AuthError::Missing));
    assert_eq!(auth.authenticate(Some(""), NOW), Err(AuthError::Missing), "an empty token counts as none");
    let good = sign(JwtAlgorithm::HS256, &claims());
    let hs_header = b64(&json!({"alg": "HS256"}));
    let garbage = [
        "abc".to_owned(),
        "a.b".to_owned(),
        "a.b.c".to_owned(),
        "a.b.c.d".to_owned(),
        "...".to_owned(),
        "!!!.@@@.###".to_owned(),
        format!("{good}.extra"),
        format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("not json"), b64(&claims()), "sig"),
        format!("{}.{}.{}", b64(&json!(["alg", "HS256"])), b64(&claims()), "sig"),
        format!("{}.{}.{}", b64(&json!({"typ": "JWT"})), b64(&claims()), "sig"),
        format!("{}.{}.{}", b64(&json!({"alg": "HS256", "kid": 7})), b64(&claims()), "sig"),
        "x".repeat(MAX_TOKEN_BYTES + 1),
    ];
    for token in &garbage {
        let r = auth.authenticate(Some(token), NOW);
        assert!(matches!(r, Err(AuthError::Malformed(_))), "{token:.60}: {r:?}");
        assert_eq!(r.unwrap_err().code(), "token_malformed");
    }
    // The signature is checked before the payload is read.
    assert_eq!(auth.authenticate(Some(&format!("{hs_header}.%%%.sig")), NOW), Err(AuthError::BadSignature));
    // A correctly signed token whose payload is not a JSON object.
    let array_payload = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!(["sub", "u"]),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert!(matches!(auth.authenticate(Some(&array_payload), NOW), Err(AuthError::Malformed(_))));
    // A bad signature encoding on an otherwise good token.
    let (head, _) = good.rsplit_once('.').unwrap();
    assert!(matches!(
        auth.authenticate(Some(&format!("{head}.@@@")), NOW),
        Err(AuthError::Malformed(_) | AuthError::BadSignature)
    ));
}

#[test]
fn claim_mapping() {
    let auth = jwt_auth(JwtAlgorithm::HS256, |_| {});
    let run = |c: Value| auth.authenticate(Some(&sign(JwtAlgorithm::HS256, &c)), NOW);

    assert_eq!(run(json!({"exp": NOW + 60})), Err(AuthError::MissingClaim("user id")));
    assert_eq!(run(json!({"exp": NOW + 60, "sub": 42})), Err(AuthError::InvalidClaim("user id")));
    assert_eq!(run(json!({"exp": NOW + 60, "sub": ""})), Err(AuthError::InvalidClaim("user id")));
    assert_eq!(run(json!({"exp": NOW + 60, "sub": "u", "tenant": 1})), Err(AuthError::InvalidClaim("tenant")));
    assert_eq!(run(json!({"exp": NOW + 60, "sub": "u", "roles": "admin"})), Err(AuthError::InvalidClaim("roles")));
    assert_eq!(run(json!({"exp": NOW + 60, "sub": "u", "roles": ["a", 1]})), Err(AuthError::InvalidClaim("roles")));

    let id = run(json!({"exp": NOW + 60, "sub": "u"})).unwrap();
    assert_eq!((&*id.tenant, &*id.user_id, id.roles.len()), ("default", "u", 0));

    let custom = jwt_auth(JwtAlgorithm::HS256, |j| {
        j.user_claim = "uid".into();
        j.tenant_claim = "org".into();
        j.roles_claim = "perms".into();
        j.default_tenant = "public".into();
    });
    let run = |c: Value| custom.authenticate(Some(&sign(JwtAlgorithm::HS256, &c)), NOW);
    let id = run(json!({"exp": NOW + 60, "uid": "u7", "org": "o1", "perms": ["p"], "sub": "ignored"})).unwrap();
    assert_eq!((&*id.tenant, &*id.user_id, id.roles.as_slice()), ("o1", "u7", &["p".to_owned()][..]));
    let id = run(json!({"exp": NOW + 60, "uid": "u7", "tenant": "not-this-one"})).unwrap();
    assert_eq!(&*id.tenant, "public");
    assert_eq!(run(json!({"exp": NOW + 60, "sub": "u"})), Err(AuthError::MissingClaim("user id")));
}

/// A JWK set with the fixture RSA key as `rsa-1` and the second RSA key as `rsa-2`.
fn two_rsa_keys() -> PathBuf {
    let set: Value = serde_json::from_slice(&read("jwks.json")).unwrap();
    let mut rsa2 =
        Jwk::from_encoding_key(&EncodingKey::from_rsa_pem(&read("rsa2_private.pem")).unwrap(), Algorithm::RS256)
            .unwrap();
    rsa2.common.key_id = Some("rsa-2".into());
    let keys = json!({"keys": [set["keys"][0], set["keys"][1], serde_json::to_value(rsa2).unwrap()]});
    let path = std::env::temp_dir().join(format!("imks-auth-two-rsa-{}.json", std::process::id()));
    std::fs::write(&path, keys.to_string()).unwrap();
    path
}

#[test]
fn jwks_chooses_the_key_by_kid() {
    let rsa1 = private_key(JwtAlgorithm::RS256);
    let rsa2 = EncodingKey::from_rsa_pem(&read("rsa2_private.pem")).unwrap();
    let path = two_rsa_keys();
    let auth = jwks_auth(JwtAlgorithm::RS256, path.clone());
    std::fs::remove_file(&path).unwrap();

    let token = |key: &EncodingKey, kid: Option<&str>| sign_with(Algorithm::RS256, key, kid, &claims());
    assert!(auth.authenticate(Some(&token(&rsa1, Some("rsa-1"))), NOW).is_ok());
    assert!(auth.authenticate(Some(&token(&rsa2, Some("rsa-2"))), NOW).is_ok());
    assert_eq!(auth.authenticate(Some(&token(&rsa2, Some("rsa-1"))), NOW), Err(AuthError::BadSignature));
    assert_eq!(auth.authenticate(Some(&token(&rsa1, Some("nope"))), NOW), Err(AuthError::UnknownKey));
    // The EC key of the set is not an RS256 key.
    assert_eq!(auth.authenticate(Some(&token(&rsa1, Some("ec-1"))), NOW), Err(AuthError::UnknownKey));
    // Two RS256 keys: a token without a kid is ambiguous.
    assert_eq!(auth.authenticate(Some(&token(&rsa1, None)), NOW), Err(AuthError::UnknownKey));
    assert_eq!(AuthError::UnknownKey.code(), "token_unknown_key");
}

#[test]
fn jwks_without_kid_uses_the_only_key_of_the_algorithm() {
    for alg in [JwtAlgorithm::RS256, JwtAlgorithm::ES256] {
        let auth = jwks_auth(alg, fixture("jwks.json"));
        assert!(auth.authenticate(Some(&sign(alg, &claims())), NOW).is_ok(), "{alg:?}");
        let kid = if alg == JwtAlgorithm::RS256 { "rsa-1" } else { "ec-1" };
        let token = sign_with(alg.to_jsonwebtoken(), &private_key(alg), Some(kid), &claims());
        assert!(auth.authenticate(Some(&token), NOW).is_ok(), "{alg:?}");
        let token = sign_with(alg.to_jsonwebtoken(), &private_key(alg), Some("other"), &claims());
        assert_eq!(auth.authenticate(Some(&token), NOW), Err(AuthError::UnknownKey), "{alg:?}");
    }
}

#[test]
fn pem_key_ignores_the_kid() {
    let token = sign_with(Algorithm::ES256, &private_key(JwtAlgorithm::ES256), Some("whatever"), &claims());
    assert!(jwt_auth(JwtAlgorithm::ES256, |_| {}).authenticate(Some(&token), NOW).is_ok());
}

fn static_auth() -> Authenticator {
    let section = AuthSection {
        mode: AuthMode::Static,
        static_tokens: vec![
            StaticToken {
                token: "tok-alpha".into(),
                tenant: "t1".into(),
                user_id: "svc-a".into(),
                roles: vec!["pub".into()],
            },
            StaticToken { token: "tok-beta".into(), tenant: "t2".into(), user_id: "svc-b".into(), roles: vec![] },
        ],
        ..AuthSection::default()
    };
    Authenticator::new(&resolve(&section).unwrap())
}

#[test]
fn static_tokens() {
    let auth = static_auth();
    assert!(auth.requires_token());
    let id = auth.authenticate(Some("tok-alpha"), NOW).unwrap();
    assert_eq!((&*id.tenant, &*id.user_id, id.roles.as_slice()), ("t1", "svc-a", &["pub".to_owned()][..]));
    assert!(id.claims.is_empty());
    let id = auth.authenticate(Some("tok-beta"), 0).unwrap();
    assert_eq!((&*id.tenant, &*id.user_id), ("t2", "svc-b"));
    for bad in ["tok-alph", "tok-alphaa", "TOK-ALPHA", " tok-alpha", "tok-gamma"] {
        assert_eq!(auth.authenticate(Some(bad), NOW), Err(AuthError::UnknownToken), "{bad:?}");
    }
    assert_eq!(auth.authenticate(None, NOW), Err(AuthError::Missing));
    assert_eq!(auth.authenticate(Some(""), NOW), Err(AuthError::Missing));
    assert_eq!(AuthError::UnknownToken.code(), "token_unknown");
}

#[test]
fn anonymous_mode() {
    let auth = Authenticator::new(&resolve(&AuthSection::default()).unwrap());
    assert!(!auth.requires_token());
    let a = auth.authenticate(None, NOW).unwrap();
    let b = auth.authenticate(Some("any token at all"), NOW).unwrap();
    for id in [&a, &b] {
        assert_eq!(&*id.tenant, "default");
        let hex = id.user_id.strip_prefix("anon-").unwrap();
        assert!(hex.len() == 16 && hex.bytes().all(|c| c.is_ascii_hexdigit()), "{}", id.user_id);
        assert!(id.roles.is_empty() && id.claims.is_empty());
    }
    assert_ne!(a.user_id, b.user_id, "each anonymous client gets its own id");
    assert!(jwt_auth(JwtAlgorithm::HS256, |_| {}).requires_token());
}

#[test]
fn error_codes_are_distinct_snake_case() {
    let all = [
        AuthError::Missing,
        AuthError::Malformed(String::new()),
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::BadSignature,
        AuthError::WrongAlgorithm,
        AuthError::BadIssuer,
        AuthError::BadAudience,
        AuthError::UnknownKey,
        AuthError::UnknownToken,
        AuthError::MissingClaim("exp"),
        AuthError::InvalidClaim("exp"),
    ];
    let codes: std::collections::HashSet<_> = all.iter().map(AuthError::code).collect();
    assert_eq!(codes.len(), all.len());
    assert!(codes.iter().all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    assert!(all.iter().all(|e| e.http_status() == 401));
}

fn head(raw: &str) -> RequestHead {
    let limits = Limits { max_head_bytes: 8192, max_headers: 32, max_body_bytes: 0 };
    match parse_head(raw.as_bytes(), &limits) {
        Ok(Parsed::Complete(h)) => h,
        _ => panic!("not a complete head: {raw:?}"),
    }
}

#[test]
fn token_from_query_and_header() {
    let t = |raw: &str| token_from_request(&head(raw));
    assert_eq!(t("GET /ws?token=abc HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(), Some("abc"));
    assert_eq!(t("GET /ws?a=1&token=a%2Eb%2Bc%3D HTTP/1.1\r\n\r\n").as_deref(), Some("a.b+c="), "percent-decoded");
    assert_eq!(
        t("GET /ws?token=from-query HTTP/1.1\r\nAuthorization: Bearer from-header\r\n\r\n").as_deref(),
        Some("from-query"),
        "the query wins"
    );
    assert_eq!(t("GET /ws HTTP/1.1\r\nAuthorization: Bearer from-header\r\n\r\n").as_deref(), Some("from-header"));
    assert_eq!(t("GET /ws HTTP/1.1\r\nauthorization: bEaReR   h.p.s  \r\n\r\n").as_deref(), Some("h.p.s"));
    assert_eq!(t("GET /ws?token= HTTP/1.1\r\nAuthorization: Bearer h\r\n\r\n").as_deref(), Some("h"), "empty = absent");
    assert_eq!(t("GET /ws HTTP/1.1\r\nAuthorization: Basic dTpw\r\n\r\n"), None);
    assert_eq!(t("GET /ws HTTP/1.1\r\nAuthorization: Bearer\r\n\r\n"), None);
    assert_eq!(t("GET /ws HTTP/1.1\r\nAuthorization: Bearer \r\n\r\n"), None);
    assert_eq!(t("GET /ws HTTP/1.1\r\nAuthorization: Bearerabc\r\n\r\n"), None);
    assert_eq!(t("GET /ws?tokens=abc HTTP/1.1\r\n\r\n"), None);
    assert_eq!(t("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"), None);
}
