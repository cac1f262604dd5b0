//! Progress on the operator's terminal: lines for steps, a bar for the bucket copy; plain lines
//! (and a transfer line every few seconds) when stderr is not a terminal, as in CI or cron.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use backup_agent::progress::{Event, Progress};

/// Progress drawn on stderr; `quiet` keeps only warnings.
pub fn stderr_progress(quiet: bool) -> Progress {
    if std::io::stderr().is_terminal() && !quiet {
        bars()
    } else {
        lines(quiet)
    }
}

fn lines(quiet: bool) -> Progress {
    // When the last transfer line was printed, and at how many objects.
    let last = Mutex::new((Instant::now() - Duration::from_secs(60), None::<u64>));
    Progress::to(move |e| match e {
        Event::Warning { .. } => eprintln!("{}", e.line()),
        _ if quiet => {}
        Event::Transfer {
            done_objects,
            total_objects,
            ..
        } => {
            let mut l = last.lock().expect("progress");
            let finished = Some(*done_objects) == *total_objects;
            if l.1 != Some(*done_objects) && (l.0.elapsed() >= Duration::from_secs(5) || finished) {
                *l = (Instant::now(), Some(*done_objects));
                eprintln!("{}", e.line());
            }
        }
        _ => eprintln!("{}", e.line()),
    })
}

fn bars() -> Progress {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let bar: Mutex<Option<ProgressBar>> = Mutex::new(None);
    Progress::to(move |e| match e {
        Event::Transfer {
            component,
            done_bytes,
            total_bytes,
            ..
        } => {
            let mut b = bar.lock().expect("progress");
            let pb = b.get_or_insert_with(|| {
                let pb = multi.add(ProgressBar::new(total_bytes.unwrap_or(0)));
                pb.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                pb.set_prefix(component.clone());
                pb
            });
            pb.set_position(*done_bytes);
            if total_bytes.is_some_and(|t| *done_bytes >= t) {
                pb.finish_and_clear();
            }
        }
        _ => {
            let _ = multi.println(e.line());
        }
    })
}
