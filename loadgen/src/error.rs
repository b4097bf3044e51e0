//! The load generator's error type: every failure a run can end with, typed, so that the CLI and
//! the tests can tell a broker error from a bad scenario or a full disk.

use std::io;
use std::path::PathBuf;

use sluice_client::ClientError;

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
    /// A Kafka call failed: the socket, the protocol, or the broker's error code (sluice-client's error).
    #[error(transparent)]
    Client(#[from] ClientError),
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
        LoadgenError::Client(ClientError::protocol(broker, message))
    }

    pub(crate) fn broker(broker: &str, api: &'static str, code: i16, detail: Option<String>) -> Self {
        LoadgenError::Client(ClientError::Broker { broker: broker.to_string(), api, code, detail })
    }

    /// The Kafka error code, if a broker answered with one.
    pub fn broker_code(&self) -> Option<i16> {
        match self {
            LoadgenError::Client(e) => e.code(),
            _ => None,
        }
    }
}

pub type Result<T, E = LoadgenError> = std::result::Result<T, E>;
