//! A restore's plan and report as people read them.

use super::{RestorePlan, RestoreReport};
use crate::components::{mlmd, Component};

/// The restore plan as `--dry-run` prints it.
pub fn render_plan(p: &RestorePlan) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Plan to restore backup {} into model {}",
        p.backup_id, p.model
    );
    let names: Vec<&str> = p.components.iter().map(|c| c.as_str()).collect();
    let _ = writeln!(o, "  components: {}", names.join(", "));
    let _ = writeln!(
        o,
        "  safety backup first: {}",
        if p.safety_backup {
            "yes (label pre-restore)"
        } else {
            "NO (--no-safety-backup)"
        }
    );
    let _ = writeln!(o, "  scales (recorded first, put back afterwards):");
    for r in &p.scales {
        let _ = writeln!(
            o,
            "    {:<22} {} -> {} -> {}",
            r.app, r.original, r.changed_to, r.original
        );
    }
    let human = crate::units::human_bytes;
    for (app, id) in &p.mysql {
        let size = p
            .mysql_bytes
            .iter()
            .find(|(a, _)| a == app)
            .map(|(_, b)| {
                format!(
                    ": writes its {} backup stream over the whole database",
                    human(*b)
                )
            })
            .unwrap_or_default();
        let _ = writeln!(o, "  {app}: mysql-k8s restore backup-id={id}{size} (the app is blocked afterwards, as mysql-k8s always leaves it)");
    }
    if let Some(pod) = &p.mlmd_pod {
        let sizes = match (p.mlmd_bytes, p.mlmd_replaced_bytes) {
            (Some(w), Some(r)) => format!(
                ": writes {} over the live {} (kept beside it)",
                human(w),
                human(r)
            ),
            (Some(w), None) => format!(": writes {} (no live file to replace)", human(w)),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "  mlmd: {} swapped in {pod}{sizes}, pod restarted",
            mlmd::DB_PATH
        );
    }
    if p.components.contains(&Component::Mlpipeline) {
        let _ = writeln!(
            o,
            "  mlpipeline: the bucket made equal to {} objects ({}); objects the backup lacks are removed",
            p.mlpipeline_objects,
            crate::units::human_bytes(p.mlpipeline_bytes)
        );
        if let Some(c) = &p.mlpipeline_changes {
            let _ = writeln!(
                o,
                "    against the bucket now: {} to copy back ({}), {} to delete ({}), {} unchanged",
                c.to_copy,
                crate::units::human_bytes(c.to_copy_bytes),
                c.to_delete,
                crate::units::human_bytes(c.to_delete_bytes),
                c.unchanged
            );
        }
    }
    for w in &p.warnings {
        let _ = writeln!(o, "  warning: {w}");
    }
    let _ = writeln!(o, "Nothing was changed (--dry-run).");
    o
}

/// The summary of a finished restore.
pub fn render_report(r: &RestoreReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "backup {} restored", r.backup_id);
    if let Some(s) = &r.safety_backup {
        let _ = writeln!(o, "  safety backup of the state before: {s}");
    }
    for m in &r.mysql {
        let _ = writeln!(
            o,
            "  {:<10} mysql-k8s restore of {}: {} {}",
            m.app, m.backup_id, m.status, m.message
        );
        if !m.next.is_empty() {
            let _ = writeln!(o, "             next: {}", m.next);
        }
    }
    if r.mlmd {
        let _ = writeln!(
            o,
            "  {:<10} database swapped in, pod restarted and ready",
            "mlmd"
        );
    }
    if let Some(s) = &r.mlpipeline {
        let _ = writeln!(
            o,
            "  {:<10} {} copied back ({}), {} unchanged, {} removed",
            "mlpipeline",
            s.copied,
            crate::units::human_bytes(s.copied_bytes),
            s.unchanged,
            s.deleted
        );
    }
    for w in &r.warnings {
        let _ = writeln!(o, "  warning: {w}");
    }
    o
}
