//! Pacing shared by every transfer of a copy: a bandwidth limit, and progress a few times a
//! second however many objects move.

use std::time::{Duration, Instant};

use crate::progress::{Event, Progress};

/// A shared token bucket: uploads wait so the average stays under the rate.
pub struct Limiter {
    rate: f64,
    next_free: tokio::sync::Mutex<Instant>,
}

impl Limiter {
    pub fn new(rate: u64, now: Instant) -> Self {
        Limiter {
            rate: rate.max(1) as f64,
            next_free: tokio::sync::Mutex::new(now),
        }
    }

    /// When a transfer of `bytes` may start, booking the line after it.
    fn reserve(next_free: &mut Instant, rate: f64, bytes: u64, now: Instant) -> Instant {
        let start = (*next_free).max(now);
        *next_free = start + Duration::from_secs_f64(bytes as f64 / rate);
        start
    }

    pub async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next_free.lock().await;
            Self::reserve(&mut next, self.rate, bytes, Instant::now())
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

/// Transfer events, at most a few a second however many objects move.
pub struct Ticker<'a> {
    progress: &'a Progress,
    /// Objects and bytes expected, when they were counted ahead.
    totals: Option<(u64, u64)>,
    done: std::sync::Mutex<(u64, u64, Instant)>,
}

impl<'a> Ticker<'a> {
    const EVERY: Duration = Duration::from_millis(500);

    pub fn new(progress: &'a Progress, totals: Option<(u64, u64)>) -> Self {
        Ticker {
            progress,
            totals,
            done: std::sync::Mutex::new((0, 0, Instant::now())),
        }
    }

    pub fn add(&self, bytes: u64) {
        self.add_objects(1, bytes)
    }

    /// `objects` done at once (a group read from one pack), `bytes` between them.
    pub fn add_objects(&self, objects: u64, bytes: u64) {
        let due = {
            let mut d = self.done.lock().expect("ticker");
            d.0 += objects;
            d.1 += bytes;
            let due = d.2.elapsed() >= Self::EVERY;
            if due {
                d.2 = Instant::now();
            }
            due.then_some((d.0, d.1))
        };
        if let Some((objects, bytes)) = due {
            self.emit(objects, bytes);
        }
    }

    fn emit(&self, objects: u64, bytes: u64) {
        self.progress.emit(Event::Transfer {
            component: "mlpipeline".into(),
            done_bytes: bytes,
            total_bytes: self.totals.map(|t| t.1),
            done_objects: objects,
            total_objects: self.totals.map(|t| t.0),
        });
    }

    pub fn finish(&self) {
        let (objects, bytes, _) = *self.done.lock().expect("ticker");
        if objects > 0 {
            self.emit(objects, bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_spaces_transfers_at_the_rate() {
        let t0 = Instant::now();
        let mut next = t0;
        let starts: Vec<Duration> = [1000u64, 1000, 500, 0]
            .iter()
            .map(|b| Limiter::reserve(&mut next, 1000.0, *b, t0) - t0)
            .collect();
        assert_eq!(
            starts,
            [
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_millis(2500)
            ]
        );
        // Idle time is not saved up: a late transfer starts when it comes.
        let late = t0 + Duration::from_secs(10);
        assert_eq!(Limiter::reserve(&mut next, 1000.0, 1000, late), late);
    }
}
