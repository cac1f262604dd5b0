//! The benchmark's smoke run: every case runs on small data against real SeaweedFS servers and
//! rclone, every copy passes its independent check, and the table and results name them all.
//! Ratios are not asserted here (a debug build on a shared CI machine); BENCHMARKS.md holds the
//! release figures.

use std::process::Command;

/// Runs `bench ARGS --out DIR` with the repository's .venv first on PATH; its stdout, once it
/// has succeeded.
fn bench(args: &[&str], out_dir: &std::path::Path) -> String {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin");
    let path = format!("{venv}:{}", std::env::var("PATH").unwrap_or_default());
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .arg("--out")
        .arg(out_dir)
        .env("PATH", path)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn quick_bench_runs_every_case_and_every_copy_checks_out() {
    let out_dir = tempfile::tempdir().unwrap();
    let stdout = bench(&["run", "--quick"], out_dir.path());
    for case in [
        "| S full copy |",
        "| L full copy |",
        "| M full copy |",
        "| M nothing changed |",
        "| M 1% changed |",
        "| M restore |",
        "| MLMD capture | ",
    ] {
        assert!(stdout.contains(case), "no {case} row in:\n{stdout}");
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Correctness:"))
        .expect("a correctness line");
    let words: Vec<&str> = line.split_whitespace().collect();
    // "Correctness: N of M checks passed ..."
    assert_eq!(words[1], words[3], "{line}");
    assert!(words[1].parse::<u32>().unwrap() >= 9, "{line}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("results-quick.json")).unwrap())
            .unwrap();
    // The incremental run with nothing changed read no object bytes (a check in the results).
    let checks = results["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["case"] == "M nothing changed"
        && c["passed"] == true
        && c["what"].as_str().unwrap().contains("read 0 object bytes")));
    // Peak memory was measured for backup-agent in every case.
    for (case, tools) in results["cases"].as_object().unwrap() {
        if let Some(ours) = tools.get("backup-agent") {
            let rss = ours["max_rss_mib"][0].as_f64().unwrap();
            assert!(rss > 1.0 && rss < 1024.0, "{case}: {rss} MiB");
        }
    }
}

/// The scale benchmark's smoke run: every command at 2,000 objects and the synthetic planner,
/// each checked (the no-change backup read nothing, the restore copied every object, the prune
/// forgot two backups and deleted their blobs), with peak memory measured for each.
#[test]
fn quick_scale_bench_runs_every_command_and_every_check_passes() {
    let out_dir = tempfile::tempdir().unwrap();
    let stdout = bench(&["scale", "--quick"], out_dir.path());
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("scale-quick.json")).unwrap())
            .unwrap();
    let rows = results["rows"].as_array().unwrap();
    for case in [
        "full backup",
        "no-change backup",
        "1% changed backup",
        "verify",
        "restore",
        "prune",
        "synthetic plan",
        "synthetic mark",
    ] {
        let row = rows
            .iter()
            .find(|r| r["case"] == case && r["tool"] == "backup-agent")
            .unwrap_or_else(|| panic!("no {case} row in {stdout}"));
        let rss = row["max_rss_mib"].as_f64().unwrap();
        assert!(rss > 1.0 && rss < 1024.0, "{case}: {rss} MiB");
    }
    assert!(rows.iter().any(|r| r["tool"] == "rclone sync --fast-list"));
    let checks = results["checks"].as_array().unwrap();
    assert!(checks.len() >= 6, "{checks:?}");
    assert!(checks.iter().all(|c| c[1] == true), "{checks:?}");
}
