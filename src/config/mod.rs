//! Configuration: `imks.toml` (the file's shape, [`file`]) plus per-shard files and `IMKS_*`
//! environment overrides, resolved and validated into [`Config`], which is what the server uses.
//!
//! Environment overrides name a key path with `__` between sections:
//! `IMKS_SERVER__SHARDS=2`, `IMKS_WEBSOCKET__BACKPRESSURE=drop_oldest`,
//! `IMKS_SERVER__LISTEN='["127.0.0.1:3000"]'`. The value is read as a TOML value, or as a string
//! when it is not one.

pub mod file;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use file::{FileConfig, ShardFile};

pub use crate::shard::config::{
    Backpressure, Coalesce, DriverChoice, HttpConfig, RingFullPolicy, RuntimeConfig, ShardConfig, WsConfig,
};

/// A configuration that cannot be used. Each message names the offending field or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A section's own validation failed; its message already names the field.
    #[error("{0}")]
    Section(String),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

/// The resolved, validated configuration of a node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    pub shards: Vec<ShardConfig>,
    pub driver: DriverChoice,
    pub uring_entries: u32,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
    pub tick: Duration,
    pub http: HttpConfig,
    pub ws: WsConfig,
    pub ring_capacity: usize,
    pub ring_full_policy: RingFullPolicy,
    pub sidecar_channel_capacity: usize,
    pub sidecar_probe_timeout: Duration,
    pub eio: crate::engineio::EioConfig,
    pub sio: crate::socketio::SioConfig,
    pub log_level: String,
    /// Serve the conformance application (set by `imks conformance`, not by the file).
    pub conformance: bool,
    /// Keys are not printed by `imks config check`.
    #[serde(skip)]
    pub auth: crate::auth::AuthConfig,
    pub limits: crate::limits::LimitsConfig,
    pub chat: crate::chat::ChatConfig,
    #[serde(skip)]
    pub store: crate::store::StoreConfig,
    #[serde(skip)]
    pub membership: crate::membership::MembershipConfig,
}

impl Config {
    /// Loads `path` (or the defaults when `None`), the per-shard files beside it and the
    /// `IMKS_*` variables of the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(path: Option<&Path>, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let (mut table, base_dir) = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?;
                let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?;
                (table, p.parent().map(Path::to_path_buf).unwrap_or_default())
            }
            None => (toml::Table::new(), PathBuf::from(".")),
        };
        apply_env(&mut table, env)?;
        let file: FileConfig = deserialize_table(table, "imks.toml")?;
        let shards_dir = base_dir.join(&file.server.shards_dir);
        Self::resolve(file, |i| read_shard_file(&shards_dir, i))
    }

    /// Validates a file configuration; `shard_file(i)` yields shard `i`'s overrides, if any.
    pub fn resolve(
        file: FileConfig,
        mut shard_file: impl FnMut(usize) -> Result<Option<ShardFile>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let s = &file.server;
        let driver = match s.driver.as_str() {
            "auto" => DriverChoice::Auto,
            "io_uring" | "iouring" => DriverChoice::IoUring,
            "epoll" | "legacy" => DriverChoice::Epoll,
            other => return Err(invalid("server.driver", format!("`{other}` is not one of auto, io_uring, epoll"))),
        };
        let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let shard_count = match s.shards {
            0 if !s.cpus.is_empty() => s.cpus.len(),
            0 => available,
            n => n,
        };
        if shard_count > 1024 {
            return Err(invalid("server.shards", "at most 1024 shards"));
        }
        if !s.cpus.is_empty() && s.cpus.len() != shard_count {
            return Err(invalid(
                "server.cpus",
                format!("lists {} CPUs for {} shards; give one per shard or none", s.cpus.len(), shard_count),
            ));
        }
        let listen = parse_addrs("server.listen", &s.listen)?;
        if listen.is_empty() {
            return Err(invalid("server.listen", "needs at least one address"));
        }
        positive("server.max_connections", s.max_connections as u64)?;
        positive("server.tick_ms", s.tick_ms)?;
        positive("server.uring_entries", u64::from(s.uring_entries))?;
        let h = &file.http;
        positive("http.max_head_bytes", h.max_head_bytes as u64)?;
        positive("http.max_headers", h.max_headers as u64)?;
        positive("http.header_timeout_ms", h.header_timeout_ms)?;
        positive("http.idle_timeout_ms", h.idle_timeout_ms)?;
        if h.read_buffer_bytes < 512 {
            return Err(invalid("http.read_buffer_bytes", "must be at least 512"));
        }
        let w = &file.websocket;
        positive("websocket.max_message_bytes", w.max_message_bytes as u64)?;
        positive("websocket.max_frame_bytes", w.max_frame_bytes as u64)?;
        positive("websocket.ping_interval_ms", w.ping_interval_ms)?;
        positive("websocket.ping_timeout_ms", w.ping_timeout_ms)?;
        positive("websocket.send_queue_len", w.send_queue_len as u64)?;
        positive("websocket.write_timeout_ms", w.write_timeout_ms)?;
        positive("websocket.close_timeout_ms", w.close_timeout_ms)?;
        if w.coalesce_us > 1_000_000 {
            return Err(invalid("websocket.coalesce_us", "must be at most 1000000 (one second)"));
        }
        if w.coalesce_on_busy_percent > 100 {
            return Err(invalid("websocket.coalesce_on_busy_percent", "must be at most 100"));
        }
        if w.coalesce_off_busy_percent > w.coalesce_on_busy_percent {
            return Err(invalid(
                "websocket.coalesce_off_busy_percent",
                "must be at most websocket.coalesce_on_busy_percent",
            ));
        }
        let backpressure = match w.backpressure.as_str() {
            "close" => Backpressure::Close,
            "drop_newest" => Backpressure::DropNewest,
            "drop_oldest" => Backpressure::DropOldest,
            other => {
                return Err(invalid(
                    "websocket.backpressure",
                    format!("`{other}` is not one of close, drop_newest, drop_oldest"),
                ))
            }
        };
        if file.rings.capacity < 2 {
            return Err(invalid("rings.capacity", "must be at least 2"));
        }
        let ring_full_policy = match file.rings.full_policy.as_str() {
            "wait" => RingFullPolicy::Wait,
            "drop" => RingFullPolicy::Drop,
            other => return Err(invalid("rings.full_policy", format!("`{other}` is not one of wait, drop"))),
        };
        positive("sidecar.channel_capacity", file.sidecar.channel_capacity as u64)?;
        let e = &file.engineio;
        positive("engineio.ping_interval_ms", e.ping_interval_ms)?;
        positive("engineio.ping_timeout_ms", e.ping_timeout_ms)?;
        positive("engineio.max_payload", e.max_payload as u64)?;
        positive("engineio.max_buffered_packets", e.max_buffered_packets as u64)?;
        let eio = crate::engineio::EioConfig {
            ping_interval: Duration::from_millis(e.ping_interval_ms),
            ping_timeout: Duration::from_millis(e.ping_timeout_ms),
            max_payload: e.max_payload,
            max_buffered_packets: e.max_buffered_packets,
            cors_origins: e.cors_origins.clone(),
            cors_credentials: e.cors_credentials,
        };
        let so = &file.socketio;
        positive("socketio.connect_timeout_ms", so.connect_timeout_ms)?;
        positive("socketio.recovery_max_packets", so.recovery_max_packets as u64)?;
        let sio = crate::socketio::SioConfig {
            connect_timeout: Duration::from_millis(so.connect_timeout_ms),
            max_attachments: so.max_attachments,
            recovery: (so.recovery_window_ms > 0).then(|| crate::socketio::recovery::RecoveryConfig {
                window: Duration::from_millis(so.recovery_window_ms),
                max_packets: so.recovery_max_packets,
            }),
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&file.log.level) {
            return Err(invalid("log.level", format!("`{}` is not a tracing filter: {e}", file.log.level)));
        }
        positive("sidecar.probe_timeout_ms", file.sidecar.probe_timeout_ms)?;
        let auth = crate::auth::resolve(&file.auth).map_err(|e| ConfigError::Section(e.to_string()))?;
        let limits = crate::limits::resolve(&file.limits).map_err(|e| ConfigError::Section(e.to_string()))?;
        positive("chat.handler_timeout_ms", file.chat.handler_timeout_ms)?;
        positive("chat.max_sessions_per_user", file.chat.max_sessions_per_user as u64)?;
        let chat = crate::chat::ChatConfig {
            duplicate_login: file.chat.duplicate_login,
            max_sessions_per_user: file.chat.max_sessions_per_user,
            handler_timeout: Duration::from_millis(file.chat.handler_timeout_ms),
        };
        let store = crate::store::config::resolve(&file.store).map_err(|e| ConfigError::Section(e.to_string()))?;
        let membership =
            crate::membership::resolve(&file.membership).map_err(|e| ConfigError::Section(e.to_string()))?;

        let allowed = if s.pin_threads { allowed_cpus() } else { Vec::new() };
        let per_shard_conns = s.max_connections.div_ceil(shard_count);
        let mut shards = Vec::with_capacity(shard_count);
        for index in 0..shard_count {
            let over = shard_file(index)?.unwrap_or_default();
            let field = |name: &str| format!("{}/shard-{index}.toml: {name}", s.shards_dir);
            let listen = match &over.listen {
                Some(l) => parse_addrs(&field("listen"), l)?,
                None => listen.clone(),
            };
            if listen.is_empty() {
                return Err(invalid(field("listen"), "needs at least one address"));
            }
            let cpu = over
                .cpu
                .or_else(|| s.cpus.get(index).copied())
                .or_else(|| (!allowed.is_empty()).then(|| allowed[index % allowed.len()]));
            let cpu = if s.pin_threads { cpu } else { None };
            let max_connections = over.max_connections.unwrap_or(per_shard_conns);
            positive(&field("max_connections"), max_connections as u64)?;
            let send_queue_len = over.send_queue_len.unwrap_or(w.send_queue_len);
            positive(&field("send_queue_len"), send_queue_len as u64)?;
            shards.push(ShardConfig { index, cpu, listen, max_connections, send_queue_len });
        }

        Ok(Config {
            shards,
            driver,
            uring_entries: s.uring_entries,
            max_connections: s.max_connections,
            shutdown_timeout: Duration::from_millis(s.shutdown_timeout_ms),
            tick: Duration::from_millis(s.tick_ms),
            http: HttpConfig {
                max_head_bytes: h.max_head_bytes,
                max_headers: h.max_headers,
                max_body_bytes: h.max_body_bytes,
                header_timeout: Duration::from_millis(h.header_timeout_ms),
                idle_timeout: Duration::from_millis(h.idle_timeout_ms),
                read_buffer_bytes: h.read_buffer_bytes,
            },
            ws: WsConfig {
                max_message_bytes: w.max_message_bytes,
                max_frame_bytes: w.max_frame_bytes,
                ping_interval: Duration::from_millis(w.ping_interval_ms),
                ping_timeout: Duration::from_millis(w.ping_timeout_ms),
                backpressure,
                write_timeout: Duration::from_millis(w.write_timeout_ms),
                close_timeout: Duration::from_millis(w.close_timeout_ms),
                coalesce: (w.coalesce_us > 0).then(|| Coalesce {
                    window: Duration::from_micros(w.coalesce_us),
                    on_busy_percent: w.coalesce_on_busy_percent,
                    off_busy_percent: w.coalesce_off_busy_percent,
                }),
            },
            ring_capacity: file.rings.capacity,
            ring_full_policy,
            sidecar_channel_capacity: file.sidecar.channel_capacity,
            sidecar_probe_timeout: Duration::from_millis(file.sidecar.probe_timeout_ms),
            eio,
            sio,
            log_level: file.log.level.clone(),
            conformance: false,
            auth,
            limits,
            chat,
            store,
            membership,
        })
    }

    /// Turns this configuration into the conformance application's (`imks conformance`): the
    /// test application of `conformance-server.md`, driven by public suites and benchmark
    /// load generators from any origin and at any rate, so the origin policy allows any origin
    /// and the per-session message rate is not limited.
    pub fn conformance_mode(&mut self) {
        self.conformance = true;
        self.auth.allow_any_origin = true;
        self.limits.rate = None;
    }

    /// What the shard layer needs of this configuration.
    pub fn runtime(&self) -> RuntimeConfig {
        RuntimeConfig {
            shards: self.shards.clone(),
            driver: self.driver,
            uring_entries: self.uring_entries,
            max_connections: self.max_connections,
            limits: self.limits.clone(),
            shutdown_timeout: self.shutdown_timeout,
            tick: self.tick,
            http: self.http.clone(),
            ws: self.ws.clone(),
            ring_capacity: self.ring_capacity,
            ring_full_policy: self.ring_full_policy,
            sidecar_channel_capacity: self.sidecar_channel_capacity,
            sidecar_probe_timeout: self.sidecar_probe_timeout,
        }
    }

    /// A configuration from defaults alone (what `make run` uses without a file).
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::resolve(FileConfig::default(), |_| Ok(None))
    }
}

/// The CPUs this process may run on (its affinity mask), in ascending order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bitmask that sched_getaffinity fills in; we pass its exact size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

fn positive(field: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(invalid(field, "must be greater than 0"));
    }
    Ok(())
}

fn parse_addrs(field: &str, list: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    list.iter().map(|a| a.parse().map_err(|_| invalid(field, format!("`{a}` is not an IP:port address")))).collect()
}

fn deserialize_table<T: serde::de::DeserializeOwned>(table: toml::Table, what: &str) -> Result<T, ConfigError> {
    let value = toml::Value::Table(table);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { what.to_string() } else { path };
        invalid(field, e.into_inner().to_string())
    })
}

fn read_shard_file(dir: &Path, index: usize) -> Result<Option<ShardFile>, ConfigError> {
    let path = dir.join(format!("shard-{index}.toml"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let name = format!("shards/shard-{index}.toml");
    deserialize_table(table, &name).map(Some).map_err(|e| match e {
        ConfigError::Invalid { field, message } if field != name => invalid(format!("{name}: {field}"), message),
        other => other,
    })
}

/// Applies `IMKS_SECTION__KEY=value` variables (or deeper, `IMKS_AUTH__JWT__SECRET`) to the
/// parsed file.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("IMKS_") else { continue };
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if path.len() < 2 || path.iter().any(String::is_empty) {
            return Err(invalid(name.clone(), "IMKS_ variables name a key as IMKS_<SECTION>__<KEY>"));
        }
        let value = parse_env_value(raw);
        let (key, sections) = path.split_last().unwrap_or((&path[0], &[]));
        let mut here = &mut *table;
        for section in sections {
            let entry = here.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(inner) = entry else {
                return Err(invalid(name.clone(), format!("`{section}` is not a section")));
            };
            here = inner;
        }
        here.insert(key.clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempdir();
        let path = dir.join("imks.toml");
        std::fs::write(&path, text).unwrap();
        let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        Config::load_with_env(Some(&path), &env)
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("imks-cfg-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load_str("", &[]).unwrap();
        assert_eq!(c.shards[0].listen, vec!["0.0.0.0:3000".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.ws.backpressure, Backpressure::Close);
        assert_eq!(c.http.max_head_bytes, 8192);
        assert_eq!(c.ring_full_policy, RingFullPolicy::Wait);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let err = load_str("[websocket]\nsend_queue = 3\n", &[]).unwrap_err().to_string();
        assert!(err.contains("websocket"), "{err}");
        assert!(err.contains("send_queue"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = load_str("[server]\nshards = \"two\"\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("server.shards"), "{err}");
    }

    #[test]
    fn bad_enum_values_name_the_field() {
        let err = load_str("[websocket]\nbackpressure = \"panic\"\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("websocket.backpressure"), "{err}");
        let err = load_str("[server]\ndriver = \"kqueue\"\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("server.driver"), "{err}");
        let err = load_str("[server]\nlisten = [\"nope\"]\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("server.listen"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let c = load_str(
            "[server]\nshards = 3\n",
            &[
                ("IMKS_SERVER__SHARDS", "2"),
                ("IMKS_WEBSOCKET__BACKPRESSURE", "drop_oldest"),
                ("IMKS_SERVER__LISTEN", "[\"127.0.0.1:0\"]"),
            ],
        )
        .unwrap();
        assert_eq!(c.shards.len(), 2);
        assert_eq!(c.ws.backpressure, Backpressure::DropOldest);
        assert_eq!(c.shards[1].listen[0].port(), 0);
    }

    #[test]
    fn unknown_env_key_is_rejected() {
        let err = load_str("", &[("IMKS_SERVER__SHARDZ", "2")]).unwrap_err().to_string();
        assert!(err.contains("shardz"), "{err}");
        let err = load_str("", &[("IMKS_NOSECTION", "2")]).unwrap_err().to_string();
        assert!(err.contains("IMKS_NOSECTION"), "{err}");
    }

    #[test]
    fn shard_files_override_one_shard() {
        let dir = tempdir();
        std::fs::create_dir_all(dir.join("shards")).unwrap();
        std::fs::write(
            dir.join("shards/shard-1.toml"),
            "cpu = 1\nsend_queue_len = 7\nlisten = [\"127.0.0.1:4000\"]\nmax_connections = 9\n",
        )
        .unwrap();
        let path = dir.join("imks.toml");
        std::fs::write(&path, "[server]\nshards = 2\nmax_connections = 100\n").unwrap();
        let c = Config::load_with_env(Some(&path), &[]).unwrap();
        assert_eq!(c.shards[0].send_queue_len, 1024);
        assert_eq!(c.shards[0].max_connections, 50);
        assert_eq!(c.shards[1].send_queue_len, 7);
        assert_eq!(c.shards[1].cpu, Some(1));
        assert_eq!(c.shards[1].max_connections, 9);
        assert_eq!(c.shards[1].listen[0].port(), 4000);

        std::fs::write(dir.join("shards/shard-0.toml"), "cpus = 1\n").unwrap();
        let err = Config::load_with_env(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("shard-0.toml") && err.contains("cpus"), "{err}");
    }

    #[test]
    fn write_coalescing_is_checked_and_can_be_turned_off() {
        let c = load_str("", &[]).unwrap();
        assert_eq!(
            c.ws.coalesce,
            Some(Coalesce { window: Duration::from_micros(5000), on_busy_percent: 80, off_busy_percent: 50 })
        );
        assert_eq!(load_str("[websocket]\ncoalesce_us = 0\n", &[]).unwrap().ws.coalesce, None);
        let always = "[websocket]\ncoalesce_on_busy_percent = 0\ncoalesce_off_busy_percent = 0\n";
        assert_eq!(load_str(always, &[]).unwrap().ws.coalesce.map(|c| c.on_busy_percent), Some(0));
        for (toml, field) in [
            ("coalesce_us = 1000001", "websocket.coalesce_us"),
            ("coalesce_on_busy_percent = 101", "websocket.coalesce_on_busy_percent"),
            ("coalesce_on_busy_percent = 40", "websocket.coalesce_off_busy_percent"),
        ] {
            let err = load_str(&format!("[websocket]\n{toml}\n"), &[]).unwrap_err().to_string();
            assert!(err.starts_with(field), "{toml}: {err}");
        }
        load_str("[websocket]\ncoalesce_us = 1000000\n", &[]).unwrap();
    }

    #[test]
    fn zero_limits_are_rejected() {
        let err = load_str("[websocket]\nsend_queue_len = 0\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("websocket.send_queue_len"), "{err}");
        let err = load_str("[server]\nshards = 2\ncpus = [0]\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("server.cpus"), "{err}");
    }

    #[test]
    fn section_errors_name_their_field_once() {
        for (text, start) in [
            ("[auth]\nmode = \"jwt\"\n", "auth.jwt"),
            ("[auth]\nmode = \"static\"\n", "auth.static_tokens"),
            ("[limits]\nmessage_burst = 0\n", "limits.message_burst"),
            ("[store]\nmax_conversations = 0\n", "store.max_conversations"),
            ("[membership]\nmode = \"config\"\nchannels = [{ id = \"\", members = [] }]\n", "membership.channels[0]"),
            ("[chat]\nmax_sessions_per_user = 0\n", "chat.max_sessions_per_user"),
            ("[chat]\nduplicate_login = \"sometimes\"\n", "chat.duplicate_login"),
        ] {
            let err = load_str(text, &[]).unwrap_err().to_string();
            assert!(err.starts_with(start), "{text}: {err}");
        }
        let c = load_str("[chat]\nduplicate_login = \"kick_oldest\"\n[limits]\nmessage_rate = 0\n", &[]).unwrap();
        assert_eq!(c.chat.duplicate_login, crate::chat::DuplicateLogin::KickOldest);
        assert!(c.limits.rate.is_none());
    }

    #[test]
    fn env_reaches_nested_sections() {
        let c = load_str(
            "[auth]\nmode = \"jwt\"\n",
            &[("IMKS_AUTH__JWT__SECRET", "from-the-environment-and-long"), ("IMKS_AUTH__JWT__LEEWAY_S", "7")],
        )
        .unwrap();
        assert_eq!(c.auth.jwt.as_ref().map(|j| j.leeway_s), Some(7));
        let err = load_str("", &[("IMKS_SERVER__SHARDS__X", "1")]).unwrap_err().to_string();
        assert!(err.starts_with("server.shards"), "{err}");
    }

    #[test]
    fn shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("imks.example.toml");
        Config::load_with_env(Some(&path), &[]).unwrap();
    }
}
