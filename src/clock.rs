//! Wall-clock time as Kafka uses it: milliseconds since the Unix epoch (timestamps, session and
//! lag deadlines, producer-id expiry). A leaf module: it imports nothing of the broker.

/// Milliseconds since the Unix epoch; 0 if the system clock is before it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
