//! Renders the checks: an aligned table for people, JSON for machines.

use serde::Serialize;

use super::{Applied, Check, Status};

/// Longest `current`/`recommended` cell before it wraps onto its own line in the table.
const MAX_CELL_CHARS: usize = 44;

/// The table: one row per check (name, current, recommended, status), the reason under it.
pub fn table(checks: &[Check]) -> String {
    let headers = ["CHECK", "CURRENT", "RECOMMENDED", "STATUS"];
    let rows: Vec<[String; 4]> = checks
        .iter()
        .map(|c| [c.name.to_string(), c.current.clone(), c.recommended.clone(), c.status.label().to_string()])
        .collect();
    let mut width = headers.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count().min(MAX_CELL_CHARS));
        }
    }
    let line = |cells: [&str; 4]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(cell.chars().count());
            s.push_str(cell);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers);
    out.push_str(&line(width.map(|w| "-".repeat(w)).each_ref().map(String::as_str)));
    for (c, r) in checks.iter().zip(&rows) {
        out.push_str(&line(r.each_ref().map(String::as_str)));
        let indent = " ".repeat(width[0] + 2);
        out.push_str(&format!("{indent}why: {}\n", c.why));
        if c.status == Status::Change {
            if let Some(fix) = &c.fix {
                out.push_str(&format!("{indent}fix: {fix}\n"));
            }
        }
    }
    out
}

/// One line under the table: how many checks want a change and what to do next.
pub fn summary(checks: &[Check]) -> String {
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let change = count(Status::Change);
    let applicable = checks.iter().filter(|c| c.status == Status::Change && !c.actions.is_empty()).count();
    let mut s = format!(
        "{} checks: {} ok, {change} to change, {} not available, {} unknown.",
        checks.len(),
        count(Status::Ok),
        count(Status::NotAvailable),
        count(Status::Unknown)
    );
    if applicable > 0 {
        s.push_str(&format!(
            " {applicable} can be changed now: `sluice tune --dry-run` shows the commands, `--apply` (root) runs them."
        ));
    }
    s + "\n"
}

/// What `--apply` / `--dry-run` did: bare commands for a dry run (a shell script), otherwise one
/// line per command with its outcome.
pub fn applied(actions: &[Applied]) -> String {
    if actions.is_empty() {
        return "# nothing to change at run time\n".into();
    }
    let mut out = String::new();
    for a in actions {
        match a.outcome.as_str() {
            "dry-run" => out.push_str(&format!("{}\n", a.command)),
            "applied" => out.push_str(&format!("applied  {}  (was {})\n", a.command, a.was)),
            failed => out.push_str(&format!("FAILED   {}  ({failed})\n", a.command)),
        }
    }
    out
}

#[derive(Serialize)]
struct JsonReport<'a> {
    checks: &'a [Check],
    #[serde(skip_serializing_if = "Option::is_none")]
    actions: Option<&'a [Applied]>,
}

/// The machine-readable report: `{"checks": [...], "actions": [...]}`.
pub fn json(checks: &[Check], actions: Option<&[Applied]>) -> String {
    serde_json::to_string_pretty(&JsonReport { checks, actions }).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
