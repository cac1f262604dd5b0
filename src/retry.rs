//! One retry policy for every external system: transient failures (as each error type says)
//! are retried with exponential backoff, a bounded number of times; anything else fails at once.

use std::time::Duration;

/// Errors that know whether trying again could help.
pub trait Retryable: std::fmt::Display {
    fn is_retryable(&self) -> bool;
}

/// Attempts for a call made while a run changes things: about 23 s of backoff in all, enough
/// to ride out a restarting S3 server or a controller's blip rather than fail a long backup.
pub const ATTEMPTS: u32 = 8;
/// Attempts for the checks before a run changes anything: an endpoint that is down is said at
/// once, and nothing is lost by stopping.
pub const PREFLIGHT_ATTEMPTS: u32 = 3;

const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(10);

/// Calls `f` up to `attempts` times while it fails with a retryable error.
pub async fn retry<T, E, F, Fut>(attempts: u32, what: &str, mut f: F) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = FIRST_DELAY;
    let mut n = 1;
    loop {
        match f().await {
            Err(e) if e.is_retryable() && n < attempts => {
                tracing::warn!("{what}: {e}; retry {n} of {} in {delay:?}", attempts - 1);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_DELAY);
                n += 1;
            }
            other => return other,
        }
    }
}

/// The same policy for blocking calls (the juju CLI).
pub fn retry_blocking<T, E: Retryable>(
    attempts: u32,
    what: &str,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut delay = FIRST_DELAY;
    let mut n = 1;
    loop {
        match f() {
            Err(e) if e.is_retryable() && n < attempts => {
                tracing::warn!("{what}: {e}; retry {n} of {} in {delay:?}", attempts - 1);
                std::thread::sleep(delay);
                delay = (delay * 2).min(MAX_DELAY);
                n += 1;
            }
            other => return other,
        }
    }
}
