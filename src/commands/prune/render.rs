//! A prune's plan and report as people read them.

use std::collections::BTreeMap;

use super::{Forget, PrunePlan, PruneReport};

/// The plan: each backup kept (and why) or forgotten, and what it frees.
pub fn render_plan(p: &PrunePlan) -> String {
    let mut out = format!("{}\n", p.selection);
    let forgotten: BTreeMap<&str, &Forget> = p.forget.iter().map(|f| (f.id.as_str(), f)).collect();
    for d in &p.decisions {
        match forgotten.get(d.id.as_str()) {
            Some(f) => out.push_str(&format!(
                "  forget {}  {:<16} {:>10}  {}\n",
                d.id,
                f.phase,
                crate::units::human_bytes(f.bytes),
                f.label
            )),
            None => out.push_str(&format!("  keep   {}  {}\n", d.id, d.reasons.join("; "))),
        }
    }
    let mysql: usize = p.forget.iter().map(|f| f.mysql.len()).sum();
    let packs = if p.packs > 0 {
        format!(
            ", {} packs no kept backup uses ({})",
            p.packs,
            crate::units::human_bytes(p.pack_bytes)
        )
    } else {
        String::new()
    };
    out.push_str(&format!(
        "frees {}: {} backup(s) ({} objects), {} blobs no kept backup uses ({}){packs}, {} leftover objects; {} mysql-k8s backup(s) in their own bucket\n",
        crate::units::human_bytes(p.bytes_freed),
        p.forget.len(),
        p.forget.iter().map(|f| f.objects).sum::<usize>(),
        p.blobs,
        crate::units::human_bytes(p.blob_bytes),
        p.leftover_objects,
        mysql
    ));
    if p.repack_packs > 0 {
        out.push_str(&format!(
            "repacks {} mostly unused pack(s) ({}): {} still used is copied into new packs first, then they go\n",
            p.repack_packs,
            crate::units::human_bytes(p.repack_pack_bytes),
            crate::units::human_bytes(p.repack_copy_bytes)
        ));
    }
    for w in &p.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

/// What a prune did.
pub fn render_report(r: &PruneReport) -> String {
    let mut out = String::new();
    for id in &r.recovered.backups {
        out.push_str(&format!(
            "recovered: backup {id} (its run had died) marked failed\n"
        ));
    }
    out.push_str(&format!(
        "forgot {} backup(s){}; deleted {} objects, freed {}",
        r.forgotten.len(),
        if r.forgotten.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.forgotten.join(", "))
        },
        r.objects_deleted,
        crate::units::human_bytes(r.bytes_freed)
    ));
    if !r.mysql_deleted.is_empty() {
        out.push_str(&format!(
            "; mysql-k8s backups deleted: {}",
            r.mysql_deleted.join(", ")
        ));
    }
    out.push('\n');
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}
