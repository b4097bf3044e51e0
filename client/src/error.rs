//! Every failure of a client call, typed: the caller can tell a broker's error code from a broken
//! connection or an answer that is not Kafka.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A socket operation failed (connect, read, write, timeout).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The broker's answer is not what the protocol allows (bad size, header, body, correlation id).
    #[error("protocol error talking to {broker}: {message}")]
    Protocol { broker: String, message: String },
    /// The broker answered with a Kafka error code.
    #[error("broker {broker} answered {api} with error code {code}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Broker { broker: String, api: &'static str, code: i16, detail: Option<String> },
    /// None of the bootstrap brokers could be reached.
    #[error("no broker of {0} could be reached")]
    NoBroker(String),
    /// The request cannot be sent as asked (no common version, unencodable, not ready in time).
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        ClientError::Io { context: context.into(), source }
    }

    pub fn protocol(broker: &str, message: impl Into<String>) -> Self {
        ClientError::Protocol { broker: broker.to_string(), message: message.into() }
    }

    /// The Kafka error code, if the broker answered with one.
    pub fn code(&self) -> Option<i16> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
