//! The `imks` command: `serve`, `conformance`, `config check`, `migrate` and `client`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod client;
use imks::{Config, Node};

#[derive(Parser)]
#[command(name = "imks", version, about = "Thread-per-core io_uring realtime messaging server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a node.
    Serve {
        /// Path to imks.toml; the defaults apply when omitted.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Start the conformance test application on 127.0.0.1:PORT (see docs/conformance.md).
    Conformance {
        #[arg(long, default_value_t = 3000)]
        port: u16,
        /// Engine.IO ping interval in ms (the protocol suites expect 300).
        #[arg(long, default_value_t = 300)]
        ping_interval: u64,
        /// Engine.IO ping timeout in ms (the protocol suites expect 200).
        #[arg(long, default_value_t = 200)]
        ping_timeout: u64,
        /// Turn on Socket.IO connection state recovery with this window in ms (off by default:
        /// the protocol suites reject the `pid` it adds to CONNECT answers).
        #[arg(long, default_value_t = 0)]
        recovery_window_ms: u64,
        /// Optional imks.toml for everything but the listener and message limits.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// A line-based WebSocket client: sends each line of standard input as a text message and
    /// prints every message it receives (for trying a node: `imks client ws://localhost:3000/ws`).
    Client {
        /// `ws://HOST:PORT/PATH`
        url: String,
    },
    /// Apply the Postgres store's schema migrations (`migrate/`) to `store.postgres.url`.
    Migrate {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// List every migration and whether it is applied, instead of applying them.
        #[arg(long)]
        status: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate the configuration and print it fully resolved, as JSON.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// The conformance suites send messages of at least 16 MiB to `/ws-echo`.
const CONFORMANCE_MAX_MESSAGE: usize = 16 * 1024 * 1024 + 1024;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Client { url } = &cli.cmd {
        return match client::run(url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("imks client: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let loaded = match &cli.cmd {
        Cmd::Serve { config }
        | Cmd::Conformance { config, .. }
        | Cmd::Config { cmd: ConfigCmd::Check { config } }
        | Cmd::Migrate { config, .. } => Config::load(config.as_deref()),
        Cmd::Client { .. } => return ExitCode::SUCCESS, // handled above
    };
    let mut config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("imks: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.cmd {
        Cmd::Config { cmd: ConfigCmd::Check { .. } } => match serde_json::to_string_pretty(&config) {
            Ok(s) => {
                // Written by hand: `println!` panics when the reader went away (`| head`).
                use std::io::Write;
                match writeln!(std::io::stdout().lock(), "{s}") {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("imks: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("imks: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Conformance { port, ping_interval, ping_timeout, recovery_window_ms, .. } => {
            config.conformance_mode();
            config.sio.connect_timeout = std::time::Duration::from_millis(1000);
            config.sio.recovery = (recovery_window_ms > 0).then(|| imks::socketio::recovery::RecoveryConfig {
                window: std::time::Duration::from_millis(recovery_window_ms),
                max_packets: 1000,
            });
            config.eio.ping_interval = std::time::Duration::from_millis(ping_interval.max(1));
            config.eio.ping_timeout = std::time::Duration::from_millis(ping_timeout.max(1));
            config.eio.max_payload = 1_000_000;
            config.eio.cors_origins = vec!["*".into()];
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            for s in &mut config.runtime.shards {
                s.listen = vec![addr];
            }
            config.runtime.ws.max_message_bytes = CONFORMANCE_MAX_MESSAGE;
            config.runtime.ws.max_frame_bytes = CONFORMANCE_MAX_MESSAGE;
            run(config)
        }
        Cmd::Serve { .. } => run(config),
        Cmd::Migrate { status, .. } => migrate(&config, status),
        Cmd::Client { .. } => ExitCode::SUCCESS, // handled above
    }
}

/// `imks migrate`: applies the pending migrations, or with `--status` lists them all.
fn migrate(config: &Config, status: bool) -> ExitCode {
    use imks::store::migrate::{self, State, MIGRATIONS};
    init_logging(&config.log_level);
    let pg = &config.store.postgres;
    let result = if status {
        migrate::blocking(&pg.url, pg.connect_timeout(), async |client| migrate::status(client, MIGRATIONS).await).map(
            |lines| {
                for s in lines {
                    let state = match s.state {
                        State::Applied { at } => format!("applied {at}"),
                        State::Pending => "pending".to_string(),
                        State::Changed { at, .. } => format!("CHANGED since it was applied {at}"),
                        State::Unknown { at } => format!("applied {at} by a newer imks (unknown here)"),
                    };
                    println!("{:04} {:<24} {state}", s.version, s.name);
                }
            },
        )
    } else {
        migrate::blocking(&pg.url, pg.connect_timeout(), async |client| migrate::run(client, MIGRATIONS).await).map(
            |applied| match applied.as_slice() {
                [] => println!("imks migrate: the schema is up to date"),
                v => println!("imks migrate: applied {v:?}"),
            },
        )
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imks migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> ExitCode {
    init_logging(&config.log_level);
    // Register the handlers before any thread starts, so a signal is never lost.
    let mut signals =
        match signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("imks: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
    match imks::limits::raise_open_files() {
        Ok(files) => {
            if files.now != files.before {
                tracing::info!(from = files.before, to = files.now, "raised the open files limit");
            }
            // Listeners, the rings' doorbells, the sidecar and the runtime hold a few more.
            let wanted = (config.runtime.max_connections as u64).saturating_add(imks::limits::OPEN_FILES_MARGIN);
            if files.now < wanted {
                tracing::warn!(
                    open_files = files.now,
                    max_connections = config.runtime.max_connections,
                    "the open files limit is below server.max_connections: accept fails with EMFILE before the node is full; raise the hard limit (LimitNOFILE= under systemd)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open files limit"),
    }
    let node = match Node::start(config) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("imks: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shards = node.shared().config.runtime.shards.len();
    for addr in node.local_addrs() {
        tracing::info!(%addr, shards, "imks listening");
    }
    // Shards with their own `listen` (shard files) are reachable only there: say where.
    for i in 1..shards {
        if node.shard_addrs(i) != node.local_addrs() {
            for addr in node.shard_addrs(i) {
                tracing::info!(shard = i, %addr, "imks shard listening");
            }
        }
    }
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    if node.shutdown() {
        tracing::info!("stopped");
        ExitCode::SUCCESS
    } else {
        tracing::error!("shutdown did not complete in time");
        ExitCode::FAILURE
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).init();
}
