//! `sluice topic create|list|describe|delete` against a real broker, through the binary.

mod common;

use std::process::Command;

use common::{unique_topic, Broker};

fn sluice_topic(broker: &Broker, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("topic")
        .args(args)
        .args(["--bootstrap", &broker.bootstrap()])
        .output()
        .expect("run sluice topic");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn topic_cli_create_list_describe_delete() {
    let broker = Broker::start();
    let topic = unique_topic("cli");
    let (ok, out) = sluice_topic(&broker, &["create", &topic, "--partitions", "3", "--config", "retention.ms=60000"]);
    assert!(ok, "{out}");
    let (ok, out) = sluice_topic(&broker, &["create", &topic]);
    assert!(!ok && out.contains("error 36"), "second create must fail with TOPIC_ALREADY_EXISTS: {out}");
    let (ok, out) = sluice_topic(&broker, &["create", &unique_topic("bad"), "--config", "no.such.config=1"]);
    assert!(!ok && out.contains("error 40"), "unknown config must fail with INVALID_CONFIG: {out}");
    let (ok, out) = sluice_topic(&broker, &["list"]);
    assert!(ok && out.lines().any(|l| l == topic), "{out}");
    let (ok, out) = sluice_topic(&broker, &["describe", &topic]);
    assert!(ok && out.contains("partitions=3") && !out.contains("id=00000000-0000"), "{out}");
    assert_eq!(out.matches("leader 0").count(), 3, "{out}");
    let (ok, out) = sluice_topic(&broker, &["delete", &topic]);
    assert!(ok, "{out}");
    let (ok, out) = sluice_topic(&broker, &["describe", &topic]);
    assert!(ok && out.contains("error 3"), "deleted topic is unknown: {out}");
    assert!(!broker.data_dir().join(format!("{topic}-0")).exists(), "partition directories removed");
}
