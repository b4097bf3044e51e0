//! Interrupt affinity of the network cards' queues against the cores the broker pins. A packet's
//! interrupt and softirq work run where the IRQ's affinity says; on a broker core the data is then
//! warm in the cache of the core that reads it, elsewhere it costs a cross-core hop per packet.

use std::collections::BTreeSet;
use std::path::Path;

use super::sysfs::{format_cpu_list, parse_cpu_list, read_path};
use super::{Action, Check, Status, TuneTarget};

const NAME: &str = "irq_affinity";
/// Levels above a network interface's `device` link searched for `msi_irqs` (virtio's parent).
const MSI_SEARCH_DEPTH: usize = 2;
/// Queues listed in the `current` column before it is shortened.
const MAX_LISTED_IRQS: usize = 6;

/// One interrupt of a network interface's queue.
struct QueueIrq {
    irq: u32,
    label: String,
    cpus: Vec<usize>,
}

pub(super) fn affinity(target: &TuneTarget) -> Check {
    let why = "NIC queue interrupts on the broker's cores: packets are handled where they are read \
               (irqbalance off, or ban these IRQs from it)";
    let cores = match target.broker_cores() {
        Ok(c) => c,
        Err(e) => return Check::unknown(NAME, &e, "?").why(why),
    };
    let recommended = format!("within broker cores {}", format_cpu_list(&cores));
    let irqs = match nic_queue_irqs(target) {
        Ok(v) => v,
        Err(e) => return Check::unknown(NAME, &e, recommended).why(why),
    };
    if irqs.is_empty() {
        return Check::new(NAME, "not available (no NIC queue interrupts found)", recommended, Status::NotAvailable)
            .why(why);
    }
    let mut listed: Vec<String> =
        irqs.iter().take(MAX_LISTED_IRQS).map(|q| format!("{}:{}", q.label, format_cpu_list(&q.cpus))).collect();
    if irqs.len() > MAX_LISTED_IRQS {
        listed.push(format!("... {} IRQs", irqs.len()));
    }
    let current = listed.join(" ");
    let outside: Vec<&QueueIrq> = irqs.iter().filter(|q| q.cpus.iter().any(|c| !cores.contains(c))).collect();
    if outside.is_empty() {
        return Check::new(NAME, current, recommended, Status::Ok).why(why);
    }
    // Spread the queues round-robin over the broker's cores, one core each.
    let mut c = Check::new(NAME, current, recommended, Status::Change)
        .why(why)
        .fix("stop irqbalance (or IRQBALANCE_BANNED_CPULIST) so it does not undo the change");
    for (i, q) in irqs.iter().enumerate() {
        let core = cores[i % cores.len()];
        c = c.action(Action::Write { path: format!("/proc/irq/{}/smp_affinity_list", q.irq), value: core.to_string() });
    }
    c
}

/// Queue interrupts of every physical network interface, with their current affinity.
fn nic_queue_irqs(target: &TuneTarget) -> Result<Vec<QueueIrq>, String> {
    let host = &target.host;
    let interrupts = host.read("/proc/interrupts")?;
    let names = irq_names(&interrupts);
    let net = host.path("/sys/class/net");
    let entries = std::fs::read_dir(&net).map_err(|e| format!("{}: {e}", net.display()))?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let iface = entry.file_name().to_string_lossy().into_owned();
        // Virtual interfaces (lo, bridges, veth, ifb) have no `device`: no interrupts of their own.
        let Ok(device) = std::fs::canonicalize(entry.path().join("device")) else { continue };
        let mut irqs = msi_irqs(&device);
        if irqs.is_empty() {
            // Legacy or non-PCI devices: interrupts named after the interface.
            irqs = names.iter().filter(|(_, n)| n.contains(iface.as_str())).map(|(i, _)| *i).collect();
        }
        for irq in irqs {
            let label = names.iter().find(|(i, _)| *i == irq).map(|(_, n)| n.clone()).unwrap_or_default();
            // Configuration and event vectors carry no traffic.
            if label.is_empty() || label.contains("config") || label.ends_with("-event") || !seen.insert(irq) {
                continue;
            }
            let list = host.read(&format!("/proc/irq/{irq}/smp_affinity_list"))?;
            let cpus = parse_cpu_list(&list).ok_or_else(|| format!("irq {irq}: unreadable affinity '{list}'"))?;
            out.push(QueueIrq { irq, label, cpus });
        }
    }
    Ok(out)
}

/// Interrupt numbers and names from /proc/interrupts (the last column is the name).
fn irq_names(interrupts: &str) -> Vec<(u32, String)> {
    interrupts
        .lines()
        .filter_map(|l| {
            let (num, rest) = l.trim_start().split_once(':')?;
            let irq = num.parse().ok()?;
            Some((irq, rest.split_whitespace().last()?.to_string()))
        })
        .collect()
}

/// `msi_irqs/` of a device or of one of its parents (virtio-net's is on the PCI function above it).
fn msi_irqs(device: &Path) -> Vec<u32> {
    let mut dir = Some(device);
    for _ in 0..=MSI_SEARCH_DEPTH {
        let Some(d) = dir else { break };
        if let Ok(entries) = std::fs::read_dir(d.join("msi_irqs")) {
            let mut v: Vec<u32> = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
            v.sort_unstable();
            return v;
        }
        // A single-vector device exposes its line in `irq`.
        if let Ok(n) = read_path(&d.join("irq")).and_then(|s| s.parse::<u32>().map_err(|e| e.to_string())) {
            if n != 0 {
                return vec![n];
            }
        }
        dir = d.parent();
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_names() {
        let text = "           CPU0       CPU1\n 38:          0       4673 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\nNMI:   0 0  Non-maskable interrupts\n";
        assert_eq!(irq_names(text), vec![(38, "virtio2-input.0".to_string())]);
    }
}
