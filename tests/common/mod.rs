#![allow(dead_code)]
//! Test support shared by the library's integration tests.

use backup_agent_sandbox::{Sandbox, UpOptions};

/// The sandbox binary cargo built next to this test (`cargo test --workspace` builds it).
pub fn sandbox_exe() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("backup-agent-sandbox");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p backup-agent-sandbox`",
        p.display()
    );
    p
}

/// A sandbox with `small` small objects in mlpipeline and no large ones.
pub fn sandbox(small: usize) -> Sandbox {
    let mut opts = UpOptions::new(sandbox_exe());
    opts.bucket.small = small;
    opts.bucket.large = 0;
    Sandbox::up(&opts).unwrap()
}
