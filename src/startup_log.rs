//! What `sluice serve` logs once at start, at info level: the effective configuration (one `config`
//! line per option, after file and flags) and which core owns which partitions.

use tracing::{debug, info};

use crate::config::BrokerConfig;
use crate::topics::Catalog;

/// Partitions named per core in the info line before the list is left to debug level.
const MAX_PARTITIONS_LISTED: usize = 16;

/// One `config` line per option, e.g. `config io_memory_bytes = 8388608`.
pub fn log_config(config: &BrokerConfig) {
    for (key, value) in crate::config_reference::flatten(config) {
        info!(target: "sluice::config", "config {key} = {}", value.as_deref().unwrap_or("none"));
    }
}

/// One line per core: how many partitions it owns and which.
pub fn log_layout(table: &Catalog, cores: usize) {
    let mut owned: Vec<Vec<String>> = vec![Vec::new(); cores];
    for meta in table.topics.values() {
        for (p, &core) in meta.partition_cores.iter().enumerate() {
            if let Some(list) = owned.get_mut(core as usize) {
                list.push(format!("{}-{p}", meta.name));
            }
        }
    }
    for (core, parts) in owned.iter().enumerate() {
        let shown: Vec<&str> = parts.iter().take(MAX_PARTITIONS_LISTED).map(String::as_str).collect();
        let more = parts.len().saturating_sub(MAX_PARTITIONS_LISTED);
        let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
        info!(target: "sluice::layout", core, partitions = parts.len(), "core {core}: {}{tail}", shown.join(" "));
        if more > 0 {
            debug!(target: "sluice::layout", core, "core {core}: {}", parts.join(" "));
        }
    }
}
