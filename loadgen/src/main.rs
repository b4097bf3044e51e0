//! `sluice-loadgen`: the Kafka-protocol load generator (issue 6). Not built yet.

fn main() -> std::process::ExitCode {
    eprintln!("sluice-loadgen: not built yet (issue 6)");
    std::process::ExitCode::from(1)
}
