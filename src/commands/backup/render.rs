//! A backup's plan and report as people read them (the CLI and the charm's action output).

use super::{put_back, Plan, Report};
use crate::components::mlmd;

/// The plan as `--dry-run` prints it.
pub fn render_plan(p: &Plan) -> String {
    use std::fmt::Write;
    let hb = crate::units::human_bytes;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Plan for a backup of model {} into {}",
        p.model, p.destination
    );
    let names: Vec<&str> = p.components.iter().map(|c| c.as_str()).collect();
    let _ = writeln!(o, "  components: {}", names.join(", "));
    let _ = writeln!(
        o,
        "  scales (recorded before any change, put back afterwards):"
    );
    for r in &p.scales {
        let what = if r.changed_to == r.original {
            format!("stays at {}", r.original)
        } else {
            format!("{} -> {} -> {}", r.original, r.changed_to, r.original)
        };
        let _ = writeln!(o, "    {:<22} {what}", r.app);
    }
    for app in &p.mysql {
        let _ = writeln!(
            o,
            "  {app}: mysql-k8s create-backup on a replica (not the primary)"
        );
    }
    if let (Some(pod), Some(c), Some(size)) = (&p.mlmd_pod, &p.mlmd_container, p.mlmd_size) {
        let _ = writeln!(o, "  mlmd: {} from {pod}/{c}, {}", mlmd::DB_PATH, hb(size));
    }
    if !p.minio_endpoint.is_empty() {
        let _ = writeln!(
            o,
            "  mlpipeline: {} objects, {}; to read {} objects, {} (the rest is unchanged since {})",
            p.mlpipeline_objects,
            hb(p.mlpipeline_bytes),
            p.mlpipeline_to_read,
            hb(p.mlpipeline_to_read_bytes),
            p.previous_backup.as_deref().unwrap_or("no earlier backup")
        );
        let _ = writeln!(
            o,
            "    MinIO {} through {}, credentials from {}",
            p.minio_endpoint, p.minio_reached_through, p.minio_credentials_from
        );
    }
    if !p.running_workloads.is_empty() {
        let _ = writeln!(o, "  running (--force): {}", p.running_workloads.join(", "));
    }
    let _ = writeln!(
        o,
        "  spool: {} ({} free, about {} needed)",
        p.spool,
        hb(p.spool_free),
        hb(p.spool_needed)
    );
    let _ = writeln!(o, "Nothing was changed (--dry-run).");
    o
}

/// The summary of a finished backup.
pub fn render_report(r: &Report) -> String {
    use std::fmt::Write;
    let hb = crate::units::human_bytes;
    let s = &r.statefile;
    let mut o = String::new();
    let took = s
        .finished_at
        .map(|f| (f - s.started_at).num_milliseconds() as f64 / 1000.0)
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "backup {} {} in {took:.1}s",
        s.backup_id,
        s.phase.as_str()
    );
    for m in &s.components.mysql {
        let _ = writeln!(
            o,
            "  {:<10} mysql-k8s backup {} on {} (in {})",
            m.app, m.backup_id, m.unit, m.location
        );
    }
    if let Some(m) = &s.components.mlmd {
        let _ = writeln!(
            o,
            "  {:<10} {} ({} compressed), integrity {}, {} tables",
            "mlmd",
            hb(m.size),
            hb(m.compressed_size),
            m.integrity_check,
            m.row_counts.len()
        );
    }
    if let Some(m) = &s.components.mlpipeline {
        let read = r.mlpipeline.as_ref().map_or(0, |x| x.read_objects);
        let _ = writeln!(
            o,
            "  {:<10} {} objects, {}; read {read}, uploaded {} new in {} blobs",
            "mlpipeline",
            m.objects,
            hb(m.bytes),
            hb(m.new_bytes),
            m.new_objects
        );
    }
    if s.quiesce.iter().any(|q| q.changed_to != q.original) {
        let _ = writeln!(o, "  scales put back: {}", put_back(&s.quiesce));
    }
    for w in &r.warnings {
        let _ = writeln!(o, "  warning: {w}");
    }
    o
}
