//! Which version of each API to speak with one broker: the highest that both this client and the
//! broker (its ApiVersions answer) speak.

use std::collections::HashMap;

use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use crate::error::{ClientError, Result};

/// The versions this client speaks, per API: kafka-protocol encodes any of them; these are the ones
/// with topic names rather than only topic ids, and RecordBatch v2 (magic 2) only.
pub const SUPPORTED_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::FindCoordinator, 1, 4),
    (ApiKey::ApiVersions, 0, 0),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DeleteRecords, 0, 2),
];

/// This client's range for `key`, or `None` if it does not speak it.
pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_VERSIONS.iter().find(|(k, _, _)| *k == key).map(|&(_, min, max)| (min, max))
}

/// The version of each API to use with one broker.
#[derive(Clone, Debug, Default)]
pub struct ApiVersionTable {
    chosen: HashMap<i16, i16>,
}

impl ApiVersionTable {
    /// The highest common version of every API both sides speak, from the broker's ApiVersions answer.
    pub fn from_response(response: &ApiVersionsResponse) -> ApiVersionTable {
        let mut chosen = HashMap::new();
        for range in &response.api_keys {
            let Ok(key) = ApiKey::try_from(range.api_key) else { continue };
            let Some((min, max)) = supported_range(key) else { continue };
            let version = max.min(range.max_version);
            if version >= min.max(range.min_version) {
                debug_assert!((min..=max).contains(&version), "{key:?} v{version} outside {min}..={max}");
                chosen.insert(range.api_key, version);
            }
        }
        ApiVersionTable { chosen }
    }

    /// The version to send `key` at to `broker`; an error if no version is common.
    pub fn version(&self, key: ApiKey, broker: &str) -> Result<i16> {
        self.chosen.get(&(key as i16)).copied().ok_or_else(|| {
            let (min, max) = supported_range(key).unwrap_or((0, -1));
            ClientError::protocol(broker, format!("{key:?}: the broker speaks no version in {min}..={max}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;

    fn range(key: ApiKey, min: i16, max: i16) -> ApiVersion {
        ApiVersion::default().with_api_key(key as i16).with_min_version(min).with_max_version(max)
    }

    #[test]
    fn picks_the_highest_common_version() {
        let response = ApiVersionsResponse::default().with_api_keys(vec![
            range(ApiKey::Produce, 0, 11),
            range(ApiKey::Fetch, 0, 8),
            range(ApiKey::Metadata, 13, 13),
            range(ApiKey::SaslHandshake, 0, 1),
        ]);
        let table = ApiVersionTable::from_response(&response);
        assert_eq!(table.version(ApiKey::Produce, "b").ok(), Some(9));
        assert_eq!(table.version(ApiKey::Fetch, "b").ok(), Some(8));
        assert!(table.version(ApiKey::Metadata, "b").is_err(), "no common Metadata version");
        assert!(table.version(ApiKey::SaslHandshake, "b").is_err(), "not spoken by this client");
    }
}
