//! The partition's error: a Kafka error code with a message for the client, and how the storage
//! engine's and the record parser's errors map to Kafka codes.

use kafka_protocol::error::ResponseError;

use crate::record::batch::BatchError;

/// A Kafka error code with a message for the client.
#[derive(Debug, Clone)]
pub struct PartitionError {
    pub code: ResponseError,
    pub message: String,
}

impl PartitionError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> Self {
        PartitionError { code, message: message.into() }
    }
}

impl From<sluice_io::Error> for PartitionError {
    fn from(e: sluice_io::Error) -> Self {
        let code = match &e {
            sluice_io::Error::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
            sluice_io::Error::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
            sluice_io::Error::InvalidBatch(_) => ResponseError::CorruptMessage,
            sluice_io::Error::Closed { .. } => ResponseError::NotLeaderOrFollower,
            _ => ResponseError::KafkaStorageError,
        };
        PartitionError { code, message: e.to_string() }
    }
}

impl From<BatchError> for PartitionError {
    fn from(e: BatchError) -> Self {
        let code = match e {
            BatchError::Corrupt(_) => ResponseError::CorruptMessage,
            BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
            BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
            BatchError::InvalidRecord(_) => ResponseError::InvalidRecord,
            BatchError::InvalidTxnState(_) => ResponseError::InvalidTxnState,
        };
        PartitionError { code, message: e.to_string() }
    }
}
