//! The short soak CI runs: ten scheduled backups of the daemon against the sandbox with data
//! changing and faults injected (one SIGKILL among them), then the soak's own end checks.
//! The 100-run figures are in docs/RELIABILITY.md.

use std::process::Command;

#[test]
fn a_short_soak_loses_nothing() {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin");
    let path = format!("{venv}:{}", std::env::var("PATH").unwrap_or_default());
    let out = Command::new(env!("CARGO_BIN_EXE_soak"))
        .args(["--runs", "10", "--period", "10"])
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // The seed is in the output: a failure can be run again with --seed.
    assert!(out.status.success(), "soak failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("| daemon SIGKILLed mid-run | 1 |"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .skip_while(|l| !l.starts_with("| runs |"))
        .nth(2)
        .unwrap_or_default();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert!(cells.len() > 6, "{stdout}");
    assert!(cells[1].parse::<u32>().unwrap() >= 10, "runs: {row}");
    assert_eq!(cells[6], "0", "data lost: {row}");
    for check in [
        "no lock left",
        "every completed backup kept restores",
        "every completed backup, downloaded",
        "every drill passed",
    ] {
        let line = stdout.lines().find(|l| l.contains(check)).unwrap();
        assert!(line.contains("| ok |"), "{line}");
    }
}
