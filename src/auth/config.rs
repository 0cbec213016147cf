//! `[auth]`: the file's shape ([`AuthSection`]) and its resolved form ([`AuthConfig`]).
//!
//! [`resolve`] is the only place in [`crate::auth`] that does I/O: it reads the key files once
//! at start-up, parses them, and validates every origin pattern, so that a bad key or a typo
//! fails the start with a message naming the field instead of failing every connection later.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::origin::OriginPattern;

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication: every client gets a fresh anonymous identity, and a token that is
    /// given is ignored. For development and public, read-only deployments.
    #[default]
    Anonymous,
    /// A fixed list of opaque tokens from the config file, each mapped to an identity. For
    /// service-to-service use and small deployments without an identity provider.
    Static,
    /// Signed JSON Web Tokens, verified with a key from the config.
    Jwt,
}

/// The one JWT signature algorithm a node accepts. Pinned by config, never taken from the token,
/// which is what defeats `alg: none` and the HS256-with-a-public-key confusion attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    #[default]
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    /// The name as it appears in a JWT header's `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub(crate) fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            JwtAlgorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            JwtAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            JwtAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            JwtAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

/// `[auth]`: who may connect, and from which web origins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// `"anonymous"`, `"static"` or `"jwt"`. Default `"anonymous"`.
    pub mode: AuthMode,
    /// How long a Socket.IO client has, after the Engine.IO handshake, to send its CONNECT
    /// packet carrying `auth: {token}`, in milliseconds; a client that has not authenticated by
    /// then is disconnected, so unauthenticated connections cannot pile up. Default 10000.
    pub timeout_ms: u64,
    /// Web origins allowed to open a connection: `https://app.example.com` (port included when
    /// given) or `https://*.example.com` (any subdomain, not the bare domain). Empty means
    /// same-origin only: the `Origin` must name the `Host` the request was sent to. Requests
    /// without an `Origin` header (non-browser clients) are always allowed. Default empty.
    pub allowed_origins: Vec<String>,
    /// Allow every origin. A development switch: it lets any web page open connections with
    /// its visitors' cookies and tokens. Default false.
    pub allow_any_origin: bool,
    /// The tokens accepted in `static` mode. Default none.
    pub static_tokens: Vec<StaticToken>,
    /// `[auth.jwt]`: JWT verification, used in `jwt` mode.
    pub jwt: JwtSection,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            mode: AuthMode::Anonymous,
            timeout_ms: 10_000,
            allowed_origins: Vec::new(),
            allow_any_origin: false,
            static_tokens: Vec::new(),
            jwt: JwtSection::default(),
        }
    }
}

/// `[[auth.static_tokens]]`: one accepted token and the identity it stands for.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    /// The token, compared in constant time. Required, non-empty.
    pub token: String,
    /// The tenant of the identity. Default `"default"`.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The user id of the identity. Required, non-empty.
    pub user_id: String,
    /// The roles of the identity. Default none.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// Written by hand so that logging the file config never prints a token.
impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticToken")
            .field("token", &"<redacted>")
            .field("tenant", &self.tenant)
            .field("user_id", &self.user_id)
            .field("roles", &self.roles)
            .finish()
    }
}

fn default_tenant() -> String {
    "default".into()
}

/// `[auth.jwt]`: how tokens are verified and how their claims become an identity.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSection {
    /// The only signature algorithm accepted: `"HS256"`, `"RS256"`, `"ES256"` or `"EdDSA"`.
    /// Default `"HS256"`.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret, as UTF-8 bytes. Exclusive with `secret_file`. Default none.
    pub secret: Option<String>,
    /// File holding the HS256 secret; one trailing newline is ignored, since `echo` adds one.
    /// Exclusive with `secret`. Default none.
    pub secret_file: Option<PathBuf>,
    /// PEM file (`PUBLIC KEY`, or `RSA PUBLIC KEY` for RS256) with the verification key for
    /// RS256, ES256 or EdDSA. Exclusive with `jwks_file`. Default none.
    pub public_key_file: Option<PathBuf>,
    /// JWK set file (`{"keys": [...]}`) with the verification keys for RS256, ES256 or EdDSA;
    /// the key is chosen by the token's `kid`. Read once at start-up. Default none.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` claim; unchecked when unset. Default none.
    pub issuer: Option<String>,
    /// Required `aud` claim (a string, or one element of an array); unchecked when unset.
    /// Default none.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds. Default 30.
    pub leeway_s: u64,
    /// Top-level claim holding the user id (a non-empty string, required). Default `"sub"`.
    pub user_claim: String,
    /// Top-level claim holding the tenant (a non-empty string); `default_tenant` when absent.
    /// Default `"tenant"`.
    pub tenant_claim: String,
    /// Tenant of tokens without `tenant_claim`. Default `"default"`.
    pub default_tenant: String,
    /// Top-level claim holding the roles (an array of strings); no roles when absent.
    /// Default `"roles"`.
    pub roles_claim: String,
}

impl Default for JwtSection {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_s: 30,
            user_claim: "sub".into(),
            tenant_claim: "tenant".into(),
            default_tenant: "default".into(),
            roles_claim: "roles".into(),
        }
    }
}

/// Written by hand so that logging the file config never prints the HS256 secret.
impl std::fmt::Debug for JwtSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSection")
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("public_key_file", &self.public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_s", &self.leeway_s)
            .field("user_claim", &self.user_claim)
            .field("tenant_claim", &self.tenant_claim)
            .field("default_tenant", &self.default_tenant)
            .field("roles_claim", &self.roles_claim)
            .finish()
    }
}

/// A configuration that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("{field}: cannot read {}: {source}", path.display())]
    Read { field: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> AuthConfigError {
    AuthConfigError::Invalid { field: field.into(), message: message.into() }
}

/// The resolved `[auth]`: keys loaded and parsed, tokens hashed, origin patterns validated.
///
/// `Debug` and `Serialize` never show a secret, a token or key material.
#[derive(Debug, Clone, Serialize)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// See [`AuthSection::timeout_ms`].
    pub timeout: Duration,
    pub allow_any_origin: bool,
    pub allowed_origins: Vec<OriginPattern>,
    /// The static tokens (only their count is shown).
    pub static_tokens: StaticTokens,
    /// Present in `jwt` mode only.
    pub jwt: Option<JwtConfig>,
}

impl Default for AuthConfig {
    /// Anonymous mode with the file defaults; what an absent `[auth]` resolves to.
    fn default() -> Self {
        Self {
            mode: AuthMode::Anonymous,
            timeout: Duration::from_millis(10_000),
            allow_any_origin: false,
            allowed_origins: Vec::new(),
            static_tokens: StaticTokens::default(),
            jwt: None,
        }
    }
}

/// One static token, kept as its SHA-256 digest. Comparing fixed-length digests in constant
/// time hides both the token's bytes and its length from a timing attacker.
#[derive(Clone)]
pub(crate) struct StaticEntry {
    pub(crate) digest: [u8; 32],
    pub(crate) tenant: Arc<str>,
    pub(crate) user_id: Arc<str>,
    pub(crate) roles: Vec<String>,
}

/// The static tokens of a resolved config.
#[derive(Clone, Default)]
pub struct StaticTokens(pub(crate) Vec<StaticEntry>);

impl StaticTokens {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticTokens({} tokens)", self.0.len())
    }
}

impl Serialize for StaticTokens {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0.len() as u64)
    }
}

pub(crate) fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Resolved `[auth.jwt]`.
#[derive(Debug, Clone, Serialize)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_s: u64,
    pub user_claim: String,
    pub tenant_claim: String,
    pub default_tenant: String,
    pub roles_claim: String,
    /// The verification keys (only their ids are shown).
    pub keys: KeySet,
}

/// One verification key, with the `kid` it was published under in a JWK set.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
}

/// The verification keys of a resolved JWT config: one from a secret or a PEM file, or the
/// usable keys of a JWK set.
#[derive(Clone)]
pub struct KeySet(pub(crate) Vec<VerifyKey>);

impl KeySet {
    /// The `kid`s of the keys, `None` for a key without one.
    pub fn kids(&self) -> Vec<Option<&str>> {
        self.0.iter().map(|k| k.kid.as_deref()).collect()
    }
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet({:?})", self.kids())
    }
}

impl Serialize for KeySet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.kids().serialize(s)
    }
}

/// Validates `section`, reads and parses its key files, and hashes its static tokens.
pub fn resolve(section: &AuthSection) -> Result<AuthConfig, AuthConfigError> {
    if section.timeout_ms == 0 {
        return Err(invalid("auth.timeout_ms", "must be at least 1"));
    }
    let allowed_origins = section
        .allowed_origins
        .iter()
        .enumerate()
        .map(|(i, p)| OriginPattern::parse(p).map_err(|m| invalid(format!("auth.allowed_origins[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;

    let static_tokens = match section.mode {
        AuthMode::Static => resolve_static(&section.static_tokens)?,
        _ => StaticTokens::default(),
    };
    let jwt = match section.mode {
        AuthMode::Jwt => Some(resolve_jwt(&section.jwt)?),
        _ => None,
    };
    Ok(AuthConfig {
        mode: section.mode,
        timeout: Duration::from_millis(section.timeout_ms),
        allow_any_origin: section.allow_any_origin,
        allowed_origins,
        static_tokens,
        jwt,
    })
}

fn resolve_static(tokens: &[StaticToken]) -> Result<StaticTokens, AuthConfigError> {
    if tokens.is_empty() {
        return Err(invalid("auth.static_tokens", "static mode needs at least one token"));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let field = |name: &str| format!("auth.static_tokens[{i}].{name}");
        if t.token.is_empty() {
            return Err(invalid(field("token"), "must not be empty"));
        }
        let digest = token_digest(&t.token);
        if !seen.insert(digest) {
            return Err(invalid(field("token"), "same token as an earlier entry"));
        }
        if t.user_id.is_empty() {
            return Err(invalid(field("user_id"), "must not be empty"));
        }
        if t.tenant.is_empty() {
            return Err(invalid(field("tenant"), "must not be empty"));
        }
        out.push(StaticEntry {
            digest,
            tenant: t.tenant.as_str().into(),
            user_id: t.user_id.as_str().into(),
            roles: t.roles.clone(),
        });
    }
    Ok(StaticTokens(out))
}

fn resolve_jwt(s: &JwtSection) -> Result<JwtConfig, AuthConfigError> {
    for (field, value) in [
        ("auth.jwt.user_claim", &s.user_claim),
        ("auth.jwt.tenant_claim", &s.tenant_claim),
        ("auth.jwt.default_tenant", &s.default_tenant),
        ("auth.jwt.roles_claim", &s.roles_claim),
    ] {
        if value.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
    }
    let keys = match s.algorithm {
        JwtAlgorithm::HS256 => {
            if s.public_key_file.is_some() || s.jwks_file.is_some() {
                let field = if s.public_key_file.is_some() { "auth.jwt.public_key_file" } else { "auth.jwt.jwks_file" };
                return Err(invalid(field, "HS256 verifies with auth.jwt.secret or auth.jwt.secret_file"));
            }
            let secret = match (&s.secret, &s.secret_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid("auth.jwt.secret", "set auth.jwt.secret or auth.jwt.secret_file, not both"))
                }
                (Some(secret), None) => secret.as_bytes().to_vec(),
                (None, Some(path)) => {
                    let mut bytes = read("auth.jwt.secret_file", path)?;
                    strip_one_newline(&mut bytes);
                    bytes
                }
                (None, None) => {
                    return Err(invalid("auth.jwt.secret", "HS256 needs auth.jwt.secret or auth.jwt.secret_file"))
                }
            };
            if secret.is_empty() {
                let field = if s.secret.is_some() { "auth.jwt.secret" } else { "auth.jwt.secret_file" };
                return Err(invalid(field, "the secret is empty"));
            }
            vec![VerifyKey { kid: None, key: DecodingKey::from_secret(&secret) }]
        }
        alg => {
            // A secret next to a public-key algorithm is a misconfiguration at best and the
            // setup of a key-confusion attack at worst: refuse it rather than ignore it.
            if s.secret.is_some() || s.secret_file.is_some() {
                let field = if s.secret.is_some() { "auth.jwt.secret" } else { "auth.jwt.secret_file" };
                return Err(invalid(field, format!("{} verifies with a public key, not a secret", alg.as_str())));
            }
            match (&s.public_key_file, &s.jwks_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "auth.jwt.public_key_file",
                        "set auth.jwt.public_key_file or auth.jwt.jwks_file, not both",
                    ))
                }
                (Some(path), None) => vec![load_pem(alg, path)?],
                (None, Some(path)) => load_jwks(alg, path)?,
                (None, None) => {
                    return Err(invalid(
                        "auth.jwt.public_key_file",
                        format!("{} needs auth.jwt.public_key_file or auth.jwt.jwks_file", alg.as_str()),
                    ))
                }
            }
        }
    };
    Ok(JwtConfig {
        algorithm: s.algorithm,
        issuer: s.issuer.clone(),
        audience: s.audience.clone(),
        leeway_s: s.leeway_s,
        user_claim: s.user_claim.clone(),
        tenant_claim: s.tenant_claim.clone(),
        default_tenant: s.default_tenant.clone(),
        roles_claim: s.roles_claim.clone(),
        keys: KeySet(keys),
    })
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|source| AuthConfigError::Read { field, path: path.to_path_buf(), source })
}

fn strip_one_newline(bytes: &mut Vec<u8>) {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
}

fn load_pem(alg: JwtAlgorithm, path: &Path) -> Result<VerifyKey, AuthConfigError> {
    const FIELD: &str = "auth.jwt.public_key_file";
    let pem = read(FIELD, path)?;
    let key = match alg {
        JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
        JwtAlgorithm::ES256 => DecodingKey::from_ec_pem(&pem),
        JwtAlgorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
        JwtAlgorithm::HS256 => return Err(invalid(FIELD, "HS256 takes a secret")),
    }
    .map_err(|e| invalid(FIELD, format!("{}: not a {} public key in PEM: {e}", path.display(), alg.as_str())))?;
    Ok(VerifyKey { kid: None, key })
}

/// Loads the keys of a JWK set that can verify `alg`, skipping the others: a published set
/// often also holds encryption keys or keys for other algorithms, and those are not errors.
/// A key that is meant for `alg` but cannot be parsed is an error, so a broken rotation shows
/// at start-up.
fn load_jwks(alg: JwtAlgorithm, path: &Path) -> Result<Vec<VerifyKey>, AuthConfigError> {
    const FIELD: &str = "auth.jwt.jwks_file";
    let bytes = read(FIELD, path)?;
    let at = |m: String| invalid(FIELD, format!("{}: {m}", path.display()));
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(&bytes).map_err(|e| at(format!("not a JWK set: {e}")))?;
    let (kty, crv) = match alg {
        JwtAlgorithm::RS256 => ("RSA", None),
        JwtAlgorithm::ES256 => ("EC", Some("P-256")),
        JwtAlgorithm::EdDSA => ("OKP", Some("Ed25519")),
        JwtAlgorithm::HS256 => return Err(invalid(FIELD, "HS256 takes a secret")),
    };
    let mut keys: Vec<VerifyKey> = Vec::new();
    for (i, value) in set.keys.iter().enumerate() {
        let s = |name: &str| value.get(name).and_then(|v| v.as_str());
        let usable = s("kty") == Some(kty)
            && crv.is_none_or(|c| s("crv") == Some(c))
            && s("alg").is_none_or(|a| a == alg.as_str())
            && s("use").is_none_or(|u| u == "sig");
        if !usable {
            continue;
        }
        let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|e| at(format!("keys[{i}]: {e}")))?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| at(format!("keys[{i}]: {e}")))?;
        let kid = jwk.common.key_id;
        if kid.is_some() && keys.iter().any(|k| k.kid == kid) {
            return Err(at(format!("keys[{i}]: kid {:?} appears twice", kid.unwrap_or_default())));
        }
        keys.push(VerifyKey { kid, key });
    }
    if keys.is_empty() {
        return Err(at(format!("no {} signature key in the set", alg.as_str())));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
    }

    fn jwt_section(alg: JwtAlgorithm) -> AuthSection {
        AuthSection {
            mode: AuthMode::Jwt,
            jwt: JwtSection { algorithm: alg, ..JwtSection::default() },
            ..AuthSection::default()
        }
    }

    fn err(section: &AuthSection) -> String {
        match resolve(section) {
            Ok(_) => panic!("resolve accepted {section:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_resolve_to_anonymous() {
        let section: AuthSection = toml::from_str("").unwrap();
        let cfg = resolve(&section).unwrap();
        assert_eq!(cfg.mode, AuthMode::Anonymous);
        assert_eq!(cfg.timeout, Duration::from_secs(10));
        assert!(cfg.allowed_origins.is_empty());
        assert!(!cfg.allow_any_origin);
        assert!(cfg.jwt.is_none());
        assert_eq!(section.jwt.leeway_s, 30);
        assert_eq!(section.jwt.user_claim, "sub");
    }

    #[test]
    fn file_shape_parses() {
        let section: AuthSection = toml::from_str(
            r#"
            mode = "jwt"
            timeout_ms = 5000
            allowed_origins = ["https://*.example.com"]
            [jwt]
            algorithm = "EdDSA"
            public_key_file = "k.pem"
            leeway_s = 5
            [[static_tokens]]
            token = "t"
            user_id = "u"
            "#,
        )
        .unwrap();
        assert_eq!(section.mode, AuthMode::Jwt);
        assert_eq!(section.jwt.algorithm, JwtAlgorithm::EdDSA);
        assert_eq!(section.static_tokens[0].tenant, "default");
        assert!(toml::from_str::<AuthSection>("moed = \"jwt\"").is_err());
        assert!(toml::from_str::<AuthSection>("[jwt]\nalgorithm = \"none\"").is_err());
        assert!(toml::from_str::<AuthSection>("[jwt]\nalgorithm = \"HS512\"").is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let mut section = jwt_section(JwtAlgorithm::HS256);
        section.jwt.secret = Some("hunter2-secret".into());
        section.static_tokens =
            vec![StaticToken { token: "tok-secret".into(), tenant: "t".into(), user_id: "u".into(), roles: vec![] }];
        let shown = format!("{section:?}");
        assert!(!shown.contains("hunter2-secret") && !shown.contains("tok-secret"), "{shown}");
        let cfg = resolve(&section).unwrap();
        let shown = format!("{cfg:?} {}", serde_json::to_string(&cfg).unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn jwt_needs_a_matching_key() {
        assert!(err(&jwt_section(JwtAlgorithm::HS256)).starts_with("auth.jwt.secret:"));
        assert!(err(&jwt_section(JwtAlgorithm::RS256)).starts_with("auth.jwt.public_key_file:"));

        let mut s = jwt_section(JwtAlgorithm::RS256);
        s.jwt.secret = Some("x".into());
        assert!(err(&s).starts_with("auth.jwt.secret:"));

        let mut s = jwt_section(JwtAlgorithm::HS256);
        s.jwt.public_key_file = Some(fixture("rsa_public.pem"));
        assert!(err(&s).starts_with("auth.jwt.public_key_file:"));

        let mut s = jwt_section(JwtAlgorithm::HS256);
        s.jwt.secret = Some(String::new());
        assert!(err(&s).starts_with("auth.jwt.secret:"));

        let mut s = jwt_section(JwtAlgorithm::HS256);
        s.jwt.secret = Some("a".into());
        s.jwt.secret_file = Some(fixture("nope"));
        assert!(err(&s).contains("not both"));

        let mut s = jwt_section(JwtAlgorithm::ES256);
        s.jwt.public_key_file = Some(fixture("ec_public.pem"));
        s.jwt.jwks_file = Some(fixture("jwks.json"));
        assert!(err(&s).contains("not both"));
    }

    #[test]
    fn unreadable_or_wrong_key_files_name_the_field() {
        let mut s = jwt_section(JwtAlgorithm::RS256);
        s.jwt.public_key_file = Some(fixture("missing.pem"));
        let e = err(&s);
        assert!(e.starts_with("auth.jwt.public_key_file: cannot read") && e.contains("missing.pem"), "{e}");

        // An EC key where an RSA key is expected.
        let mut s = jwt_section(JwtAlgorithm::RS256);
        s.jwt.public_key_file = Some(fixture("ec_public.pem"));
        assert!(err(&s).starts_with("auth.jwt.public_key_file:"));

        let mut s = jwt_section(JwtAlgorithm::ES256);
        s.jwt.jwks_file = Some(fixture("README.md"));
        assert!(err(&s).starts_with("auth.jwt.jwks_file:"));

        // The fixture set holds RSA and EC keys only.
        let mut s = jwt_section(JwtAlgorithm::EdDSA);
        s.jwt.jwks_file = Some(fixture("jwks.json"));
        let e = err(&s);
        assert!(e.starts_with("auth.jwt.jwks_file:") && e.contains("no EdDSA signature key"), "{e}");

        let mut s = jwt_section(JwtAlgorithm::HS256);
        s.jwt.secret_file = Some(fixture("missing-secret"));
        assert!(err(&s).starts_with("auth.jwt.secret_file: cannot read"));
    }

    #[test]
    fn keys_load_from_pem_and_jwks() {
        for (alg, file) in [
            (JwtAlgorithm::RS256, "rsa_public.pem"),
            (JwtAlgorithm::ES256, "ec_public.pem"),
            (JwtAlgorithm::EdDSA, "ed25519_public.pem"),
        ] {
            let mut s = jwt_section(alg);
            s.jwt.public_key_file = Some(fixture(file));
            let jwt = resolve(&s).unwrap().jwt.unwrap();
            assert_eq!(jwt.keys.kids(), vec![None], "{file}");
        }
        let mut s = jwt_section(JwtAlgorithm::RS256);
        s.jwt.jwks_file = Some(fixture("jwks.json"));
        assert_eq!(resolve(&s).unwrap().jwt.unwrap().keys.kids(), vec![Some("rsa-1")]);
        s.jwt.algorithm = JwtAlgorithm::ES256;
        assert_eq!(resolve(&s).unwrap().jwt.unwrap().keys.kids(), vec![Some("ec-1")]);
    }

    #[test]
    fn jwks_with_duplicate_kid_or_broken_key_is_refused() {
        let dir = std::env::temp_dir().join(format!("imks-auth-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let set: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
        let rsa = set["keys"][0].clone();

        let dup = dir.join("dup.json");
        std::fs::write(&dup, serde_json::json!({"keys": [rsa, rsa]}).to_string()).unwrap();
        let mut s = jwt_section(JwtAlgorithm::RS256);
        s.jwt.jwks_file = Some(dup);
        assert!(err(&s).contains("appears twice"));

        let mut broken = rsa.clone();
        broken["n"] = serde_json::json!(42);
        let path = dir.join("broken.json");
        std::fs::write(&path, serde_json::json!({"keys": [broken]}).to_string()).unwrap();
        s.jwt.jwks_file = Some(path);
        let e = err(&s);
        assert!(e.starts_with("auth.jwt.jwks_file:") && e.contains("keys[0]"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secret_file_drops_one_trailing_newline() {
        let path = std::env::temp_dir().join(format!("imks-auth-secret-{}", std::process::id()));
        std::fs::write(&path, b"s3cret\r\n").unwrap();
        let mut s = jwt_section(JwtAlgorithm::HS256);
        s.jwt.secret_file = Some(path.clone());
        let jwt = resolve(&s).unwrap().jwt.unwrap();
        assert_eq!(jwt.keys.0[0].key.as_bytes(), b"s3cret");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn static_mode_validation() {
        let s = AuthSection { mode: AuthMode::Static, ..AuthSection::default() };
        assert!(err(&s).starts_with("auth.static_tokens:"));

        let tok = |token: &str, user: &str| StaticToken {
            token: token.into(),
            tenant: "default".into(),
            user_id: user.into(),
            roles: vec![],
        };
        let mut s = AuthSection { mode: AuthMode::Static, static_tokens: vec![tok("a", "u"), tok("", "v")], ..s };
        assert!(err(&s).starts_with("auth.static_tokens[1].token:"));
        s.static_tokens = vec![tok("a", "u"), tok("a", "v")];
        assert!(err(&s).starts_with("auth.static_tokens[1].token:"));
        s.static_tokens = vec![tok("a", "")];
        assert!(err(&s).starts_with("auth.static_tokens[0].user_id:"));
        s.static_tokens = vec![tok("a", "u"), tok("b", "v")];
        assert_eq!(resolve(&s).unwrap().static_tokens.len(), 2);
    }

    #[test]
    fn bad_origin_and_timeout_name_the_field() {
        let s = AuthSection {
            allowed_origins: vec!["https://ok.example".into(), "example.com".into()],
            ..Default::default()
        };
        assert!(err(&s).starts_with("auth.allowed_origins[1]:"));
        let s = AuthSection { timeout_ms: 0, ..Default::default() };
        assert!(err(&s).starts_with("auth.timeout_ms:"));
        let mut s = jwt_section(JwtAlgorithm::HS256);
        s.jwt.secret = Some("x".into());
        s.jwt.user_claim = String::new();
        assert!(err(&s).starts_with("auth.jwt.user_claim:"));
    }
}
