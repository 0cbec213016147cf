//! The run's errors. Connection-level failures (the connection driver's `ConnError`) never end
//! a run: they are counted by kind in the report. These end it, before or instead of a report.
//!
//! A leaf: every other module may return these, so this one names none of them (a conversion
//! from a higher module's error belongs in that module).

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A parameter out of range or a combination that makes no sense; names the flag.
    #[error("invalid parameter: {0}")]
    Config(String),
    #[error("bad URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("building the runtime: {0}")]
    Runtime(io::Error),
    /// Not a single connection could be set up, so there is nothing to measure.
    #[error("no connection could be set up ({0})")]
    NoConnections(String),
    #[error("worker process {index}: {reason}")]
    Worker { index: usize, reason: String },
    /// `/proc` or the health URL could not be read for the server's figures.
    #[error("server probe: {0}")]
    Probe(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

impl Error {
    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }
}
