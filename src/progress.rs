//! Progress of long work as a stream of events: the CLI draws bars or prints lines, the charm
//! turns them into `action-log` lines, the daemon into metrics. The library only emits.

use std::sync::Arc;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A step of the run began or ended: `preflight`, `quiesce`, `capture`, ...
    Step {
        step: String,
        message: String,
    },
    /// A component finished its part.
    Done {
        component: String,
        message: String,
    },
    /// Bytes moved so far by a component, out of an estimate when one is known.
    Transfer {
        component: String,
        done_bytes: u64,
        total_bytes: Option<u64>,
        done_objects: u64,
        total_objects: Option<u64>,
    },
    Warning {
        message: String,
    },
}

impl Event {
    /// One line for logs and `action-log`.
    pub fn line(&self) -> String {
        match self {
            Event::Step { step, message } => format!("{step}: {message}"),
            Event::Done { component, message } => format!("{component}: {message}"),
            Event::Transfer {
                component,
                done_bytes,
                total_bytes,
                done_objects,
                total_objects,
            } => {
                let of = |n: &Option<u64>, f: fn(u64) -> String| {
                    n.map(|t| format!(" of {}", f(t))).unwrap_or_default()
                };
                format!(
                    "{component}: {}{} in {done_objects}{} objects",
                    crate::units::human_bytes(*done_bytes),
                    of(total_bytes, crate::units::human_bytes),
                    of(total_objects, |n| n.to_string()),
                )
            }
            Event::Warning { message } => format!("warning: {message}"),
        }
    }
}

type Sink = Arc<dyn Fn(&Event) + Send + Sync>;

/// Where events go. Cheap to clone; `Progress::none()` drops them.
#[derive(Clone, Default)]
pub struct Progress {
    sink: Option<Sink>,
}

impl Progress {
    pub fn none() -> Self {
        Progress { sink: None }
    }

    pub fn to(sink: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        Progress {
            sink: Some(Arc::new(sink)),
        }
    }

    /// Logs the event (the sink shows it to the user, so even warnings log at info: at the
    /// default verbosity they would print twice) and passes it to the sink.
    pub fn emit(&self, e: Event) {
        match &e {
            Event::Transfer { .. } => tracing::debug!("{}", e.line()),
            _ => tracing::info!("{}", e.line()),
        }
        if let Some(s) = &self.sink {
            s(&e)
        }
    }

    pub fn step(&self, step: &str, message: impl Into<String>) {
        self.emit(Event::Step {
            step: step.into(),
            message: message.into(),
        })
    }

    pub fn done(&self, component: &str, message: impl Into<String>) {
        self.emit(Event::Done {
            component: component.into(),
            message: message.into(),
        })
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.emit(Event::Warning {
            message: message.into(),
        })
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.sink.is_some() {
            "Progress(sink)"
        } else {
            "Progress(none)"
        })
    }
}
