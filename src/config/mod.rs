//! Configuration: `imks.toml` (the file's shape, [`file`]) plus per-shard files and `IMKS_*`
//! environment overrides, resolved and validated into [`Config`], which is what the server uses.
//!
//! This module only composes: each section and its validation belong to the module it
//! configures (the shard runtime, Engine.IO, Socket.IO, chat, auth, limits, store,
//! membership); here the file is loaded, overridden from the environment, split into sections
//! and the resolved sections gathered.
//!
//! Environment overrides name a key path with `__` between sections:
//! `IMKS_SERVER__SHARDS=2`, `IMKS_WEBSOCKET__BACKPRESSURE=drop_oldest`,
//! `IMKS_SERVER__LISTEN='["127.0.0.1:3000"]'`. The value is read as a TOML value, or as a string
//! when it is not one.

pub mod file;

use std::path::{Path, PathBuf};

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

impl From<crate::util::FieldError> for ConfigError {
    fn from(e: crate::util::FieldError) -> Self {
        ConfigError::Invalid { field: e.field, message: e.message }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

/// The resolved, validated configuration of a node: each module's resolved section.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    /// The shard runtime's settings (`[server]`, `[http]`, `[websocket]`, `[rings]`,
    /// `[sidecar]`, `[limits]` and the shard files).
    #[serde(flatten)]
    pub runtime: RuntimeConfig,
    pub eio: crate::engineio::EioConfig,
    pub sio: crate::socketio::SioConfig,
    pub log_level: String,
    /// Serve the conformance application (set by `imks conformance`, not by the file).
    pub conformance: bool,
    /// Keys are not printed by `imks config check`.
    #[serde(skip)]
    pub auth: crate::auth::AuthConfig,
    pub chat: crate::chat::ChatConfig,
    #[serde(skip)]
    pub store: crate::store::StoreConfig,
    #[serde(skip)]
    pub membership: crate::membership::MembershipConfig,
    pub cluster: crate::cluster::ClusterConfig,
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

    /// Validates a file configuration, each section by the module that owns it;
    /// `shard_file(i)` yields shard `i`'s overrides, if any.
    pub fn resolve(
        file: FileConfig,
        mut shard_file: impl FnMut(usize) -> Result<Option<ShardFile>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let section = |e: &dyn std::fmt::Display| ConfigError::Section(e.to_string());
        let shard_count = crate::shard::config::shard_count(&file.server)?;
        let shard_files = (0..shard_count).map(&mut shard_file).collect::<Result<Vec<_>, _>>()?;
        let limits = crate::limits::resolve(&file.limits).map_err(|e| section(&e))?;
        let sections = crate::shard::config::Sections {
            server: &file.server,
            http: &file.http,
            websocket: &file.websocket,
            rings: &file.rings,
            sidecar: &file.sidecar,
        };
        let runtime = crate::shard::config::resolve(sections, &shard_files, limits)?;
        let eio = file.engineio.resolve()?;
        let sio = file.socketio.resolve()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&file.log.level) {
            return Err(invalid("log.level", format!("`{}` is not a tracing filter: {e}", file.log.level)));
        }
        let auth = crate::auth::resolve(&file.auth).map_err(|e| section(&e))?;
        let chat = file.chat.resolve()?;
        let store = crate::store::config::resolve(&file.store).map_err(|e| section(&e))?;
        let membership = crate::membership::resolve(&file.membership).map_err(|e| section(&e))?;
        let cluster = file.cluster.resolve()?;
        Ok(Config {
            runtime,
            eio,
            sio,
            log_level: file.log.level.clone(),
            conformance: false,
            auth,
            chat,
            store,
            membership,
            cluster,
        })
    }

    /// Turns this configuration into the conformance application's (`imks conformance`): the
    /// test application of `conformance-server.md`, driven by public suites and benchmark
    /// load generators from any origin and at any rate, so the origin policy allows any origin
    /// and the per-session message rate is not limited.
    pub fn conformance_mode(&mut self) {
        self.conformance = true;
        self.auth.allow_any_origin = true;
        self.runtime.limits.rate = None;
    }

    /// A configuration from defaults alone (what `make run` uses without a file).
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::resolve(FileConfig::default(), |_| Ok(None))
    }
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
    use std::net::SocketAddr;
    use std::time::Duration;

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
        assert_eq!(c.runtime.shards[0].listen, vec!["0.0.0.0:3000".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.runtime.ws.backpressure, Backpressure::Close);
        assert_eq!(c.runtime.http.max_head_bytes, 8192);
        assert_eq!(c.runtime.ring_full_policy, RingFullPolicy::Wait);
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
        assert_eq!(c.runtime.shards.len(), 2);
        assert_eq!(c.runtime.ws.backpressure, Backpressure::DropOldest);
        assert_eq!(c.runtime.shards[1].listen[0].port(), 0);
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
        assert_eq!(c.runtime.shards[0].send_queue_len, 1024);
        assert_eq!(c.runtime.shards[0].max_connections, 50);
        assert_eq!(c.runtime.shards[1].send_queue_len, 7);
        assert_eq!(c.runtime.shards[1].cpu, Some(1));
        assert_eq!(c.runtime.shards[1].max_connections, 9);
        assert_eq!(c.runtime.shards[1].listen[0].port(), 4000);

        std::fs::write(dir.join("shards/shard-0.toml"), "cpus = 1\n").unwrap();
        let err = Config::load_with_env(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("shard-0.toml") && err.contains("cpus"), "{err}");
    }

    #[test]
    fn write_coalescing_is_checked_and_can_be_turned_off() {
        let c = load_str("", &[]).unwrap();
        assert_eq!(
            c.runtime.ws.coalesce,
            Some(Coalesce { window: Duration::from_micros(5000), on_busy_percent: 80, off_busy_percent: 50 })
        );
        assert_eq!(load_str("[websocket]\ncoalesce_us = 0\n", &[]).unwrap().runtime.ws.coalesce, None);
        let always = "[websocket]\ncoalesce_on_busy_percent = 0\ncoalesce_off_busy_percent = 0\n";
        assert_eq!(load_str(always, &[]).unwrap().runtime.ws.coalesce.map(|c| c.on_busy_percent), Some(0));
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
        assert!(c.runtime.limits.rate.is_none());
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

    #[test]
    fn the_example_file_holds_every_default() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("imks.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let example: FileConfig = toml::from_str(&text).unwrap();
        let defaults = serde_json::to_value(FileConfig::default()).unwrap();
        assert_eq!(serde_json::to_value(&example).unwrap(), defaults, "imks.example.toml says the defaults");
        // And says every one of them: each key with a value in the defaults is written out.
        let written: toml::Table = text.parse().unwrap();
        let written = serde_json::to_value(written).unwrap();
        fn missing(defaults: &serde_json::Value, written: &serde_json::Value, at: &str, out: &mut Vec<String>) {
            let Some(map) = defaults.as_object() else { return };
            for (k, v) in map {
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match written.get(k) {
                    None if !v.is_null() => out.push(path),
                    Some(w) => missing(v, w, &path, out),
                    None => {}
                }
            }
        }
        let mut absent = Vec::new();
        missing(&defaults, &written, "", &mut absent);
        // Lists and tables empty by default are shown as commented examples instead.
        let commented = |path: &String| {
            let key = path.rsplit('.').next().unwrap_or(path);
            text.lines().any(|l| {
                l.trim_start().starts_with('#') && (l.contains(&format!("{key} =")) || l.contains(&format!("[{path}]")))
            })
        };
        absent.retain(|p| !commented(p));
        assert!(absent.is_empty(), "keys imks.example.toml leaves out: {absent:?}");
    }
}
