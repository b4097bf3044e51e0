//! `sluice tune`, the deployment files in `tuning/`, the configuration reference and the start-up
//! log, through the real binary. Nothing here changes the host: `--apply` runs only against a fake
//! /proc and /sys tree (`--root`), and the host itself only sees `--dry-run`.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Broker;

/// Every check `sluice tune` reports, in order.
const CHECKS: &[&str] = &[
    "io_uring",
    "kernel.io_uring_disabled",
    "memlock",
    "nofile",
    "vm.swappiness",
    "vm.max_map_count",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "transparent_hugepage",
    "cpufreq.governor",
    "clocksource",
    "irq_affinity",
    "disk.scheduler",
    "disk.nr_requests",
    "filesystem",
    "o_direct",
];
const STATUSES: &[&str] = &["ok", "change", "not_available", "unknown"];

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).output().expect("run sluice")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A directory under target/ (a real disk, as a data dir would be).
fn target_tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir under target/")
}

fn tune_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["tune", "--json"];
    all.extend_from_slice(args);
    let out = sluice(&all);
    assert!(out.status.success(), "sluice {all:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("--json output does not parse: {e}\n{}", text(&out)))
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"].as_array().expect("checks array").iter().find(|c| c["name"] == name).expect(name)
}

#[test]
fn tune_reports_every_check_and_exits_zero() {
    assert_eq!(sluice::tune::CHECK_NAMES, CHECKS, "the test's list and the binary's differ");
    let dir = target_tempdir("sluice-tune-");
    let data = dir.path().to_str().expect("utf-8 path");
    let out = sluice(&["tune", "--data-dir", data]);
    let report = text(&out);
    println!("{report}");
    assert!(out.status.success(), "{report}");
    for name in CHECKS {
        assert!(report.lines().any(|l| l.starts_with(&format!("{name} "))), "no row for {name}:\n{report}");
    }
    assert!(report.contains("why: "), "{report}");
    assert!(report.lines().any(|l| l.starts_with("18 checks: ")), "summary line missing:\n{report}");
}

#[test]
fn tune_json_has_current_recommended_and_status_per_check() {
    let dir = target_tempdir("sluice-tune-");
    let report = tune_json(&["--data-dir", dir.path().to_str().expect("utf-8 path"), "--cores", "1"]);
    let checks = report["checks"].as_array().expect("checks array");
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().expect("name")).collect();
    assert_eq!(names, CHECKS);
    for c in checks {
        for field in ["current", "recommended", "why"] {
            assert!(c[field].is_string(), "{field} missing: {c}");
        }
        assert!(STATUSES.contains(&c["status"].as_str().expect("status")), "{c}");
        assert!(c["commands"].is_array(), "{c}");
    }
    // The broker's tests run here, so io_uring works; target/ is on a disk-backed filesystem that
    // can be named (ext4/xfs here; an untested one in some CI containers is a "change", not a failure).
    assert_eq!(check(&report, "io_uring")["status"], "ok");
    let fs_check = check(&report, "filesystem");
    assert!(fs_check["status"] == "ok" || fs_check["status"] == "change", "{fs_check}");
    assert!(!fs_check["current"].as_str().expect("current").starts_with("tmpfs"), "{fs_check}");
}

#[test]
fn tune_reads_o_direct_alignment_without_writing_and_probes_with_probe_io() {
    let dir = target_tempdir("sluice-tune-");
    let data = dir.path().to_str().expect("utf-8 path");
    // An empty data dir: check mode has nothing to read and writes nothing.
    let report = tune_json(&["--data-dir", data]);
    assert_eq!(check(&report, "o_direct")["status"], "unknown");
    assert_eq!(fs::read_dir(dir.path()).expect("read dir").count(), 0, "check mode wrote into the data dir");
    // --probe-io writes, syncs and removes its own file.
    let report = tune_json(&["--data-dir", data, "--probe-io"]);
    let o_direct = check(&report, "o_direct");
    assert_eq!(o_direct["status"], "ok", "{o_direct}");
    assert!(o_direct["current"].as_str().expect("current").starts_with("write ok"), "{o_direct}");
    assert_eq!(fs::read_dir(dir.path()).expect("read dir").count(), 0, "--probe-io left a file behind");
    // With the broker's own probe file present, check mode reads it with O_DIRECT.
    fs::write(dir.path().join(".sluice-dio-probe"), [0x5a_u8; 4096]).expect("write probe file");
    let report = tune_json(&["--data-dir", data]);
    let o_direct = check(&report, "o_direct");
    assert!(o_direct["current"].as_str().expect("current").starts_with("read ok"), "{o_direct}");
}

/// A fake /proc and /sys with settings below the recommendations: an NVMe partition under
/// `data_dir` (whose real device number the fake tables use), a virtio NIC and cpufreq.
fn fake_root(dir: &Path, data_dir: &Path) {
    use std::os::unix::fs::{symlink, MetadataExt};
    let dev = fs::metadata(data_dir).expect("data dir exists").dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let mountinfo = format!("22 1 {major}:{minor} / / rw,relatime shared:1 - xfs /dev/nvme0n1p1 rw\n");
    let interrupts = "           CPU0\n  0:   10   IO-APIC   2-edge   timer\n \
                      37:  0  PCI-MSIX-0000:00:03.0  0-edge  virtio2-config\n \
                      38:  5  PCI-MSIX-0000:00:03.0  1-edge  virtio2-input.0\n \
                      39:  5  PCI-MSIX-0000:00:03.0  2-edge  virtio2-output.0\n";
    let mut files: Vec<(String, String)> = [
        ("proc/sys/vm/swappiness", "60"),
        ("proc/sys/vm/max_map_count", "65530"),
        ("proc/sys/net/core/somaxconn", "128"),
        ("proc/sys/net/ipv4/tcp_max_syn_backlog", "512"),
        ("proc/sys/net/core/rmem_max", "212992"),
        ("proc/sys/net/core/wmem_max", "212992"),
        ("proc/sys/kernel/io_uring_disabled", "2"),
        ("sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never"),
        ("sys/devices/system/clocksource/clocksource0/current_clocksource", "hpet"),
        ("sys/devices/system/clocksource/clocksource0/available_clocksource", "tsc hpet acpi_pm"),
        ("proc/self/mountinfo", mountinfo.as_str()),
        ("proc/interrupts", interrupts),
        ("proc/irq/38/smp_affinity_list", "0-1023"),
        ("proc/irq/39/smp_affinity_list", "0-1023"),
        ("sys/devices/pci0000:00/0000:00:03.0/msi_irqs/37", "msix"),
        ("sys/devices/pci0000:00/0000:00:03.0/msi_irqs/38", "msix"),
        ("sys/devices/pci0000:00/0000:00:03.0/msi_irqs/39", "msix"),
        ("sys/devices/pci0000:00/0000:00:03.0/virtio2/vendor", "0x1af4"),
        ("sys/devices/pci0000:00/nvme/nvme0n1/nvme0n1p1/partition", "1"),
        ("sys/devices/pci0000:00/nvme/nvme0n1/queue/scheduler", "[mq-deadline] none"),
        ("sys/devices/pci0000:00/nvme/nvme0n1/queue/nr_requests", "64"),
    ]
    .iter()
    .map(|(p, v)| (p.to_string(), v.to_string()))
    .collect();
    // Which CPUs the broker pins depends on this process's affinity mask: give every CPU a governor.
    for cpu in 0..FAKE_CPUS {
        let base = format!("sys/devices/system/cpu/cpu{cpu}/cpufreq");
        files.push((format!("{base}/scaling_governor"), "powersave".into()));
        files.push((format!("{base}/scaling_available_governors"), "performance powersave".into()));
    }
    for (rel, value) in &files {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, format!("{value}\n")).expect("write fake setting");
    }
    let links = [
        (format!("sys/dev/block/{major}:{minor}"), "sys/devices/pci0000:00/nvme/nvme0n1/nvme0n1p1"),
        ("sys/block/nvme0n1".to_string(), "sys/devices/pci0000:00/nvme/nvme0n1"),
        ("sys/class/net/eth0/device".to_string(), "sys/devices/pci0000:00/0000:00:03.0/virtio2"),
    ];
    for (link, to) in links {
        let link = dir.join(link);
        fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
        symlink(dir.join(to), &link).expect("symlink");
    }
    fs::create_dir_all(dir.join("sys/class/net/lo")).expect("mkdir");
}

/// CPUs given a cpufreq directory in the fake tree.
const FAKE_CPUS: usize = 256;

fn read_setting(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).expect("read fake setting").trim().to_string()
}

#[test]
fn tune_dry_run_prints_commands_and_changes_nothing_apply_changes_a_fake_root() {
    let dir = target_tempdir("sluice-tune-root-");
    let data = dir.path().join("data");
    fs::create_dir_all(&data).expect("mkdir data");
    fake_root(dir.path(), &data);
    let root = dir.path().to_str().expect("utf-8 path");
    let data = data.to_str().expect("utf-8 path");
    let args = |extra: &[&'static str]| {
        let mut v = vec!["tune", "--root", root, "--data-dir", data, "--cores", "1"];
        v.extend_from_slice(extra);
        v
    };

    let out = sluice(&args(&["--dry-run"]));
    let report = text(&out);
    println!("{report}");
    assert!(out.status.success(), "{report}");
    for cmd in [
        "sysctl -w vm.swappiness=1",
        "sysctl -w vm.max_map_count=262144",
        "sysctl -w net.core.somaxconn=1024",
        "sysctl -w net.ipv4.tcp_max_syn_backlog=4096",
        "sysctl -w net.core.rmem_max=16777216",
        "sysctl -w net.core.wmem_max=16777216",
        "sysctl -w kernel.io_uring_disabled=0",
        "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled",
        "echo tsc > /sys/devices/system/clocksource/clocksource0/current_clocksource",
        "echo none > /sys/block/nvme0n1/queue/scheduler",
        "echo 256 > /sys/block/nvme0n1/queue/nr_requests",
        "/proc/irq/38/smp_affinity_list",
        "/proc/irq/39/smp_affinity_list",
        "echo performance > /sys/devices/system/cpu/cpu",
    ] {
        assert!(report.contains(cmd), "dry run does not show `{cmd}`:\n{report}");
    }
    assert!(!report.contains("/proc/irq/37/"), "the config vector carries no traffic:\n{report}");
    assert!(report.contains("mq-deadline (nvme0n1)"), "partition resolved to its disk:\n{report}");
    assert_eq!(read_setting(dir.path(), "proc/sys/vm/swappiness"), "60", "--dry-run changed a setting");
    assert_eq!(read_setting(dir.path(), "sys/kernel/mm/transparent_hugepage/enabled"), "[always] madvise never");
    assert_eq!(read_setting(dir.path(), "proc/irq/38/smp_affinity_list"), "0-1023");

    // --strict: 1 while something is below its recommendation.
    let out = sluice(&args(&["--strict"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let out = sluice(&args(&["--apply", "--json"]));
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--apply --json parses");
    let actions = report["actions"].as_array().expect("actions listed");
    assert!(actions.iter().all(|a| a["outcome"] == "applied"), "{actions:?}");
    assert_eq!(read_setting(dir.path(), "proc/sys/vm/swappiness"), "1");
    assert_eq!(read_setting(dir.path(), "proc/sys/net/core/rmem_max"), "16777216");
    assert_eq!(read_setting(dir.path(), "proc/sys/kernel/io_uring_disabled"), "0");
    assert_eq!(read_setting(dir.path(), "sys/kernel/mm/transparent_hugepage/enabled"), "madvise");
    assert_eq!(read_setting(dir.path(), "sys/devices/pci0000:00/nvme/nvme0n1/queue/scheduler"), "none");
    let irq = read_setting(dir.path(), "proc/irq/38/smp_affinity_list");
    assert!(irq.parse::<usize>().is_ok(), "one broker core per queue: {irq}");
    // The report after --apply is the re-check: every changeable setting is now ok.
    for name in [
        "vm.swappiness",
        "net.core.somaxconn",
        "kernel.io_uring_disabled",
        "transparent_hugepage",
        "clocksource",
        "cpufreq.governor",
        "irq_affinity",
        "disk.scheduler",
        "disk.nr_requests",
        "filesystem",
    ] {
        assert_eq!(check(&report, name)["status"], "ok", "{}", check(&report, name));
    }
}

#[test]
fn tune_dry_run_on_this_host_changes_nothing() {
    let before = fs::read_to_string("/proc/sys/vm/swappiness").ok();
    let out = sluice(&["tune", "--dry-run"]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.starts_with("# sluice tune --dry-run"), "{report}");
    assert_eq!(fs::read_to_string("/proc/sys/vm/swappiness").ok(), before);
}

#[test]
fn tune_usage_errors_are_nonzero() {
    let out = sluice(&["tune", "--cores", "100000"]);
    assert!(!out.status.success(), "{}", text(&out));
    let out = sluice(&["tune", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = sluice(&["--log-level", "=[", "tune"]);
    assert_eq!(out.status.code(), Some(2), "an invalid --log-level is a usage error: {}", text(&out));
}

#[test]
fn systemd_unit_verifies() {
    let have = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have {
        println!("systemd-analyze not available: skipping the unit check");
        return;
    }
    // verify wants ExecStart= to exist: check a copy that runs the binary under test.
    let unit = fs::read_to_string(repo_file("tuning/systemd/sluice.service")).expect("read the unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/sluice serve --config /etc/sluice/sluice.toml"), "{unit}");
    let dir = target_tempdir("sluice-unit-");
    let copy = dir.path().join("sluice.service");
    fs::write(&copy, unit.replace("/usr/local/bin/sluice", env!("CARGO_BIN_EXE_sluice"))).expect("write unit copy");
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().expect("run systemd-analyze");
    let report = text(&out);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{report}");
    // Bad directives are warnings with exit code 0: any line about our unit is a failure.
    let ours: Vec<&str> = report.lines().filter(|l| l.contains("sluice.service")).collect();
    assert!(ours.is_empty(), "systemd-analyze complains about the unit:\n{report}");
}

#[test]
fn example_config_parses_and_matches_the_unit() {
    let example = repo_file("tuning/sluice.toml");
    let cfg = sluice::config::BrokerConfig::from_file(&example).expect("tuning/sluice.toml parses");
    cfg.validate().expect("tuning/sluice.toml is valid");
    assert_eq!(cfg.data_dir, Path::new("/var/lib/sluice"), "the unit's StateDirectory=sluice");
    let sysctl = fs::read_to_string(repo_file("tuning/sysctl.d/90-sluice.conf")).expect("read sysctl drop-in");
    for key in CHECKS.iter().filter(|n| n.starts_with("vm.") || n.starts_with("net.") || n.starts_with("kernel.")) {
        // A leading '-' lets sysctl skip keys this kernel does not have.
        let set = |l: &str| l.trim_start_matches('-').starts_with(&format!("{key} = "));
        assert!(sysctl.lines().any(set), "{key} missing from 90-sluice.conf");
    }
}

#[test]
fn configuration_reference_is_up_to_date() {
    let out = sluice(&["config-reference"]);
    assert!(out.status.success(), "{}", text(&out));
    let generated = String::from_utf8(out.stdout).expect("utf-8");
    let committed = fs::read_to_string(repo_file("docs/configuration.md")).expect("read docs/configuration.md");
    assert!(
        generated == committed,
        "docs/configuration.md is out of date: run `cargo run --release -- config-reference > docs/configuration.md`"
    );
}

#[test]
fn serve_logs_effective_config_and_layout() {
    let broker = Broker::start();
    let log = broker.log_tail();
    for line in ["config io_memory_bytes = 8388608", "config log.segment_bytes = ", "config data_dir = "] {
        assert!(log.contains(line), "no `{line}` in the start-up log:\n{log}");
    }
    for core in ["core 0: ", "core 1: "] {
        assert!(log.contains(core), "no layout line `{core}`:\n{log}");
    }
    assert!(log.contains("__consumer_offsets-0"), "{log}");
}

#[test]
fn log_level_flag_wins_over_sluice_log() {
    // A port already taken: serve logs its start, then fails to bind and exits.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let listen = taken.local_addr().expect("local addr").to_string();
    let run = |flag: Option<&str>| {
        let dir = target_tempdir("sluice-loglevel-");
        let data = dir.path().join("data");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        if let Some(level) = flag {
            cmd.args(["--log-level", level]);
        }
        cmd.args(["serve", "--cores", "1", "--listen", &listen]).arg("--data-dir").arg(&data);
        let out = cmd.env("SLUICE_LOG", "info").env_remove("RUST_LOG").output().expect("run sluice serve");
        assert!(!out.status.success(), "serve must fail on a taken port");
        text(&out)
    };
    let info = run(None);
    assert!(info.contains("config io_memory_bytes"), "SLUICE_LOG=info shows the config:\n{info}");
    let warn = run(Some("warn"));
    assert!(!warn.contains("config io_memory_bytes"), "--log-level warn must win over SLUICE_LOG=info:\n{warn}");
    assert!(warn.contains("binding"), "the error still shows:\n{warn}");
}
