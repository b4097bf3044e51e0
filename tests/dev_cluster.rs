//! `sluice dev-cluster` end to end: three real brokers on 127.0.0.1 started by one command, each
//! listing all three in Metadata; a broker killed with SIGKILL and restarted by hand from its saved
//! command line keeps its data; a second dev-cluster on the same directory is refused; SIGTERM
//! stops everything cleanly.

mod common;

use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::cluster::{self, process_exists, temp_dir, DevCluster, BROKERS, CLUSTER_EXIT_TIMEOUT, NODE_TIMEOUT};
use common::{run_kcat, run_with_timeout, unique_topic, wire, CLIENT_PROCESS_TIMEOUT};
use sluice_client::requests;

/// Metadata v1 (all topics) from one broker: its brokers `(id, host, port)` and controller id.
fn metadata_brokers(addr: SocketAddr) -> (Vec<(i32, String, i32)>, i32) {
    let response = cluster::call(addr, &requests::metadata(None, 1), 1).expect("Metadata v1");
    let brokers = response.brokers.iter().map(|b| (b.node_id.0, b.host.to_string(), b.port)).collect();
    (brokers, response.controller_id.0)
}

/// Waits until node `id` lists exactly `expected` and names a controller among them (`controller`, if
/// given); returns that controller.
fn wait_metadata_brokers(
    cluster: &DevCluster,
    id: i32,
    expected: &[(i32, String, i32)],
    controller: Option<i32>,
) -> i32 {
    cluster.wait_until(&format!("Metadata from node {id} lists every broker and a controller"), NODE_TIMEOUT, || {
        let (brokers, named) = metadata_brokers(cluster.kafka_addr(id));
        match controller {
            _ if brokers != expected => Err(format!("brokers {brokers:?}, controller {named}")),
            Some(c) if named == c => Ok(named),
            None if (0..BROKERS).contains(&named) => Ok(named),
            _ => Err(format!("brokers {brokers:?}, controller {named}")),
        }
    })
}

#[test]
fn three_broker_dev_cluster_lifecycle() {
    let tmp = temp_dir("sluice-dev-cluster-");
    let mut cluster = DevCluster::start(tmp.path());
    let (base, dir) = (cluster.base_port(), cluster.dir().to_path_buf());

    // (a) Every broker answers, and each lists all three with their Kafka ports and names the same
    // controller (the lowest id without replication; the Raft leader, once elected, with it).
    let expected: Vec<(i32, String, i32)> =
        (0..BROKERS).map(|i| (i, "127.0.0.1".to_string(), i32::from(cluster.kafka_port(i)))).collect();
    let controller = wait_metadata_brokers(&cluster, 0, &expected, None);
    for id in 0..BROKERS {
        wire::api_versions_v0_round_trip(cluster.kafka_addr(id), NODE_TIMEOUT).expect("ApiVersions");
        wait_metadata_brokers(&cluster, id, &expected, Some(controller));
        assert!(cluster.pid(id).is_some_and(process_exists), "pid file of node {id} names a live process");
    }

    // (d) A second dev-cluster on the same directory is refused while the first runs.
    let mut second = Command::new(env!("CARGO_BIN_EXE_sluice"));
    second.args(["dev-cluster", "--brokers", "3", "--cores", "1", "--base-port"]);
    second.arg((base + 300).to_string()).arg("--data-dir").arg(&dir);
    let refused = run_with_timeout(second, b"", NODE_TIMEOUT);
    assert!(!refused.status.success(), "second dev-cluster on the same directory was not refused");
    assert!(refused.stderr.contains("is running"), "refusal should name the running node: {}", refused.stderr);

    // (b) A record on node 1 survives kill -9 and a restart from the saved command line.
    let node1 = cluster.kafka_addr(1).to_string();
    let topic = unique_topic("dev-cluster");
    let created = run_with_timeout(
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
            c.args(["topic", "create", &topic, "--bootstrap", &node1]);
            c
        },
        b"",
        CLIENT_PROCESS_TIMEOUT,
    );
    assert!(created.status.success(), "topic create on node 1: {}", created.stderr);
    run_kcat(&["-b", &node1, "-P", "-t", &topic, "-p", "0"], b"before-kill\n");
    let pid = cluster.pid(1).expect("pid file of node 1");
    cluster.kill9(1);
    // dev-cluster reaps it, reports it and removes its pid file (it names a dead process now).
    cluster.wait_until("dev-cluster reports the killed node", NODE_TIMEOUT, || {
        if cluster.pid(1).is_none() && cluster.stderr().contains("exited on its own") {
            Ok(())
        } else {
            Err(format!("pid file {:?}", cluster.pid(1)))
        }
    });
    assert!(!process_exists(pid), "killed node 1 was reaped");
    cluster.restart(1);
    wait_metadata_brokers(&cluster, 1, &expected, None);
    let read = run_kcat(&["-b", &node1, "-C", "-t", &topic, "-p", "0", "-o", "beginning", "-e", "-q"], b"");
    assert_eq!(String::from_utf8_lossy(&read).trim(), "before-kill", "record on node 1 after kill -9 and restart");
    // dev-cluster does not manage a broker restarted by hand: stop it here, cleanly.
    let status = cluster.terminate_restarted(1);
    assert_eq!(status.code(), Some(0), "restarted node 1 exit");

    // (c) SIGTERM stops the brokers dev-cluster started; exit 0; pid files gone.
    let pids: Vec<libc::pid_t> = [0, 2].iter().map(|&id| cluster.pid(id).expect("pid file")).collect();
    let started = Instant::now();
    let status = cluster.terminate();
    assert_eq!(status.code(), Some(0), "dev-cluster exit after SIGTERM; stderr:\n{}", cluster.stderr());
    assert!(started.elapsed() < CLUSTER_EXIT_TIMEOUT);
    for id in 0..BROKERS {
        assert!(!cluster.node_dir(id).join("pid").exists(), "pid file of node {id} left behind");
    }
    for pid in pids {
        assert!(!process_exists(pid), "broker {pid} still exists after dev-cluster stopped");
    }
    let mut stderr = String::new();
    fs::File::open(cluster.stderr_path()).and_then(|mut f| f.read_to_string(&mut stderr)).expect("stderr");
    assert!(!stderr.contains("after SIGTERM: SIGKILL"), "a broker needed SIGKILL at shutdown:\n{stderr}");
}

#[test]
fn bad_arguments_are_refused_before_anything_starts() {
    let tmp = temp_dir("sluice-dev-cluster-args-");
    let dir = tmp.path().to_str().expect("UTF-8 temp dir").to_string();
    for (args, says) in [
        (vec!["--brokers", "17", "--base-port", "20000"], "--brokers 17"),
        (vec!["--brokers", "0", "--base-port", "20000"], "--brokers 0"),
        (vec!["--brokers", "3", "--base-port", "65400"], "--base-port"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("dev-cluster").args(&args).args(["--data-dir", &dir]);
        let out = run_with_timeout(cmd, b"", NODE_TIMEOUT);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert!(!Path::new(&dir).join("node-0").exists(), "{args:?} started a node");
    }
    // `serve` checks its place in the cluster before it opens anything.
    let peers = ["--peer", "0=127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--peer", "1=127.0.0.1:4,127.0.0.1:5,127.0.0.1:6"];
    let data_dir = format!("{dir}/serve-data");
    for (extra, says) in [
        (vec!["--node-id", "2"], "node_id 2 is not among the cluster peers"),
        (vec!["--node-id", "1", "--peer", "2=127.0.0.1:7,127.0.0.1:8,127.0.0.1:1"], "used twice"),
        (vec!["--peer", "3=127.0.0.1:9"], "expected ID=KAFKA,REPLICATION,RAFT"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["serve", "--data-dir", &data_dir]).args(peers).args(&extra);
        let out = run_with_timeout(cmd, b"", NODE_TIMEOUT);
        assert!(!out.status.success(), "serve {extra:?} accepted");
        assert!(out.stderr.contains(says), "serve {extra:?}: {}", out.stderr);
        assert!(!Path::new(&data_dir).exists(), "serve {extra:?} created its data directory");
    }
}
