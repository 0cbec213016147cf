//! Which web origins may open a connection: the defence against cross-site WebSocket hijacking.
//!
//! Browsers send cookies and cached credentials with a WebSocket upgrade from any page, and the
//! same-origin policy does not apply to WebSockets, so the server must check `Origin` itself.
//! Non-browser clients send no `Origin` and are let through: they cannot be tricked into
//! sending a victim's credentials, so there is nothing for the check to protect.

use serde::Serialize;

use super::config::AuthConfig;

/// One parsed origin or pattern: scheme and host lower-cased, the scheme's default port
/// dropped, so that `HTTPS://App.Example.com:443` and `https://app.example.com` compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parts {
    scheme: String,
    host: String,
    port: Option<u16>,
}

/// An `auth.allowed_origins` entry: `scheme://host[:port]` or `scheme://*.domain[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    parts: Parts,
    /// `*.domain`: `parts.host` is the domain, and only strict subdomains of it match.
    wildcard: bool,
}

impl Serialize for OriginPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let star = if self.wildcard { "*." } else { "" };
        write!(f, "{}://{star}{}", self.parts.scheme, self.parts.host)?;
        match self.parts.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

impl OriginPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Err("\"*\" is not a pattern; set auth.allow_any_origin = true to allow every origin".into());
        }
        let (scheme, rest) =
            split_scheme(pattern).ok_or_else(|| format!("{pattern:?}: expected scheme://host[:port]"))?;
        let (wildcard, rest) = match rest.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, rest),
        };
        let parts = parse_authority(scheme, rest).map_err(|m| format!("{pattern:?}: {m}"))?;
        if wildcard && !parts.host.contains('.') {
            return Err(format!("{pattern:?}: a wildcard needs a domain with a dot (*.example.com)"));
        }
        if wildcard && parts.host.starts_with('[') {
            return Err(format!("{pattern:?}: a wildcard cannot cover an IP address"));
        }
        Ok(Self { parts, wildcard })
    }

    fn matches(&self, origin: &Parts) -> bool {
        if self.parts.scheme != origin.scheme || self.parts.port != origin.port {
            return false;
        }
        if !self.wildcard {
            return self.parts.host == origin.host;
        }
        // `a.example.com` matches `*.example.com`; `example.com` and `evilexample.com` do not.
        origin
            .host
            .strip_suffix(self.parts.host.as_str())
            .and_then(|prefix| prefix.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty())
    }
}

/// The origin check, built once from the config and shared by all shards.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    allow_any: bool,
    patterns: Vec<OriginPattern>,
}

impl OriginPolicy {
    pub fn new(cfg: &AuthConfig) -> Self {
        Self { allow_any: cfg.allow_any_origin, patterns: cfg.allowed_origins.clone() }
    }

    /// Whether a request with this `Origin` header (`origin`) sent to this `Host` (`host`) may
    /// connect. No `Origin` is allowed; an unparseable one (`null` from a sandboxed frame or a
    /// `file:` page, or garbage) is refused unless `allow_any_origin` is set.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        if self.allow_any {
            return true;
        }
        let Some(origin) = origin else { return true };
        let Some(origin) = parse_origin(origin) else { return false };
        if !self.patterns.is_empty() {
            return self.patterns.iter().any(|p| p.matches(&origin));
        }
        // Same-origin: the Host header carries no scheme, so its port defaults to the
        // Origin's scheme default, as a browser would have sent it.
        let Some(host) = host.and_then(|h| parse_authority(&origin.scheme, h.trim()).ok()) else { return false };
        host.host == origin.host && host.port == origin.port
    }
}

fn parse_origin(origin: &str) -> Option<Parts> {
    let (scheme, rest) = split_scheme(origin.trim())?;
    parse_authority(scheme, rest).ok()
}

/// Splits `scheme://rest`, checking the scheme's characters (RFC 3986 3.1).
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    (first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))).then_some((scheme, rest))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Parses `host[:port]` (IPv6 in brackets), with nothing after it: an origin has no path.
fn parse_authority(scheme: &str, s: &str) -> Result<Parts, String> {
    let scheme = scheme.to_ascii_lowercase();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("unclosed [ in the host")?;
        if inside.is_empty() || !inside.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return Err("bad IPv6 address".into());
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("unexpected text after the host")?),
        };
        (format!("[{}]", inside.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        let valid_label =
            |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if host.is_empty() || !host.split('.').all(valid_label) {
            return Err("expected a host name, without a path".into());
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => {
            let n: u16 = p.parse().map_err(|_| format!("bad port {p:?}"))?;
            if n == 0 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad port {p:?}"));
            }
            (default_port(&scheme) != Some(n)).then_some(n)
        }
    };
    Ok(Parts { scheme, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> OriginPolicy {
        OriginPolicy { allow_any: false, patterns: patterns.iter().map(|p| OriginPattern::parse(p).unwrap()).collect() }
    }

    #[test]
    fn exact_pattern() {
        let p = policy(&["https://app.example.com", "http://localhost:3000"]);
        assert!(p.allows(Some("https://app.example.com"), None));
        assert!(p.allows(Some("https://app.example.com:443"), None), "default port is the same origin");
        assert!(p.allows(Some("http://localhost:3000"), Some("whatever")));
        assert!(!p.allows(Some("http://app.example.com"), None), "scheme matters");
        assert!(!p.allows(Some("https://app.example.com:8443"), None), "port matters");
        assert!(!p.allows(Some("http://localhost"), None));
        assert!(!p.allows(Some("http://localhost:3001"), None));
        assert!(!p.allows(Some("https://other.example.com"), None));
        assert!(!p.allows(Some("https://app.example.com.evil.com"), None));
    }

    #[test]
    fn wildcard_pattern() {
        let p = policy(&["https://*.example.com"]);
        assert!(p.allows(Some("https://a.example.com"), None));
        assert!(p.allows(Some("https://a.b.example.com"), None));
        assert!(!p.allows(Some("https://example.com"), None), "the bare domain is not a subdomain");
        assert!(!p.allows(Some("https://evilexample.com"), None), "suffix without a dot");
        assert!(!p.allows(Some("https://.example.com"), None));
        assert!(!p.allows(Some("http://a.example.com"), None));
        assert!(!p.allows(Some("https://a.example.com:8443"), None));
        assert!(!p.allows(Some("https://a.example.com.evil.org"), None));
        let p = policy(&["https://*.example.com:8443"]);
        assert!(p.allows(Some("https://a.example.com:8443"), None));
        assert!(!p.allows(Some("https://a.example.com"), None));
    }

    #[test]
    fn case_insensitive_scheme_and_host() {
        let p = policy(&["HTTPS://App.Example.COM", "https://*.Corp.Example"]);
        assert!(p.allows(Some("https://app.example.com"), None));
        assert!(p.allows(Some("hTTps://APP.example.com"), None));
        assert!(p.allows(Some("https://X.CORP.example"), None));
    }

    #[test]
    fn empty_list_means_same_origin() {
        let p = policy(&[]);
        assert!(p.allows(Some("https://chat.example.com"), Some("chat.example.com")));
        assert!(p.allows(Some("https://chat.example.com"), Some("Chat.Example.com:443")));
        assert!(p.allows(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
        assert!(p.allows(Some("http://[::1]:8080"), Some("[::1]:8080")));
        assert!(!p.allows(Some("http://127.0.0.1:8081"), Some("127.0.0.1:8080")));
        assert!(!p.allows(Some("https://evil.com"), Some("chat.example.com")));
        assert!(!p.allows(Some("https://chat.example.com"), None), "no Host to compare with");
        assert!(!p.allows(Some("https://chat.example.com:8443"), Some("chat.example.com")));
    }

    #[test]
    fn missing_origin_allowed_bad_origin_refused() {
        let p = policy(&["https://app.example.com"]);
        assert!(p.allows(None, None));
        assert!(policy(&[]).allows(None, Some("x")));
        for bad in ["null", "", "app.example.com", "https://", "https://app.example.com/path", "https://a b.com"] {
            assert!(!p.allows(Some(bad), Some("app.example.com")), "{bad:?}");
            assert!(!policy(&[]).allows(Some(bad), Some("app.example.com")), "{bad:?}");
        }
    }

    #[test]
    fn allow_any_origin_allows_everything() {
        let p = OriginPolicy { allow_any: true, patterns: vec![] };
        assert!(p.allows(Some("https://evil.com"), Some("chat.example.com")));
        assert!(p.allows(Some("null"), None));
        assert!(p.allows(None, None));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "*",
            "example.com",
            "https://",
            "https://*.com",
            "https://a.*.example.com",
            "https://*example.com",
            "https://example.com/",
            "https://example.com:0",
            "https://example.com:99999",
            "https://example.com:+80",
            "https://[::1",
            "https://user@example.com",
            "://example.com",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(OriginPattern::parse("HTTPS://*.Example.com:443").unwrap().to_string(), "https://*.example.com");
    }
}
