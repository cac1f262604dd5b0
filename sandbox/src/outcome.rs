//! What one invocation of a simulated command prints and exits with. The `juju` CLI and every
//! hook tool answer with it, so it lives below both.

/// What one invocation prints and returns.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Outcome {
    pub fn ok(stdout: impl Into<String>) -> Self {
        Outcome {
            stdout: stdout.into(),
            ..Default::default()
        }
    }
    pub fn error(msg: impl std::fmt::Display) -> Self {
        Outcome {
            stderr: format!("ERROR {msg}\n"),
            code: 1,
            ..Default::default()
        }
    }
    pub fn usage(msg: impl std::fmt::Display) -> Self {
        Outcome {
            stderr: format!("ERROR {msg}\n"),
            code: 2,
            ..Default::default()
        }
    }
}
