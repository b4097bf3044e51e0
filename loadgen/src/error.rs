//! The load generator's error type: every failure a run can end with, typed, so that the CLI and
//! the tests can tell a broker error from a bad scenario or a full disk.

use std::io;
use std::path::PathBuf;

/// Why a run (or one of its steps) failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("scenario {path}: {message}")]
    Scenario { path: PathBuf, message: String },
    #[error("invalid scenario: {0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("protocol error talking to {broker}: {message}")]
    Protocol { broker: String, message: String },
    #[error("broker {broker} answered {api} with error code {code}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Broker { broker: String, api: &'static str, code: i16, detail: Option<String> },
    #[error("no broker of {0} could be reached")]
    NoBroker(String),
    #[error("writing outputs: {0}")]
    Output(String),
    #[error("a worker thread failed: {0}")]
    Worker(String),
}

impl LoadgenError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        LoadgenError::Io { context: context.into(), source }
    }

    pub(crate) fn protocol(broker: &str, message: impl Into<String>) -> Self {
        LoadgenError::Protocol { broker: broker.to_string(), message: message.into() }
    }
}

pub type Result<T, E = LoadgenError> = std::result::Result<T, E>;
