//! The services' output: a bounded buffer per service for `/v1/logs` (and the last lines a
//! failed start reports), a broadcast for `follow=true`, and `services/<name>.log`.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::broadcast;

use super::{rfc3339, Daemon};

/// The output kept per service for `/v1/logs` (Pebble's ring buffer size).
const MAX_LOG_BYTES: usize = 100 * 1024;
/// Lines of output a failed start adds to its task's log.
pub(super) const LAST_LOG_LINES: usize = 20;

#[derive(Debug, Clone)]
pub struct LogEntry {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub service: String,
    pub message: String,
}

impl LogEntry {
    /// The JSON line `/v1/logs` answers with.
    pub fn json_line(&self) -> String {
        format!(
            "{}\n",
            json!({"time": rfc3339(self.time), "service": self.service, "message": self.message})
        )
    }
}

impl Daemon {
    pub(super) fn append_log(&self, name: &str, message: String) {
        let entry = {
            let mut g = self.lock();
            g.log_seq += 1;
            let entry = LogEntry {
                seq: g.log_seq,
                time: Utc::now(),
                service: name.to_string(),
                message,
            };
            let (q, bytes) = g.logs.entry(name.to_string()).or_default();
            *bytes += entry.message.len();
            q.push_back(entry.clone());
            while *bytes > MAX_LOG_BYTES && q.len() > 1 {
                let old = q.pop_front().unwrap();
                *bytes -= old.message.len();
            }
            entry
        };
        let line = format!("{} [{name}] {}\n", rfc3339(entry.time), entry.message);
        let dir = self.dir.join("services");
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
        {
            let _ = f.write_all(line.as_bytes());
        }
        // Pebble copies its services' output to its own stdout too (`kubectl logs`).
        let _ = std::io::stdout().write_all(line.as_bytes());
        let _ = self.logs_tx.send(entry);
    }

    pub(super) fn last_lines(&self, name: &str, n: usize) -> Vec<String> {
        let g = self.lock();
        g.logs
            .get(name)
            .map(|(q, _)| {
                q.iter()
                    .skip(q.len().saturating_sub(n))
                    .map(|e| format!("    {}", e.message))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last `n` lines (`None`: all) of the services' output, oldest first, and the
    /// sequence number they run up to.
    pub fn logs(&self, services: &[String], n: Option<usize>) -> (Vec<LogEntry>, u64) {
        let g = self.lock();
        let mut all: Vec<LogEntry> = g
            .logs
            .iter()
            .filter(|(s, _)| services.is_empty() || services.contains(s))
            .flat_map(|(_, (q, _))| q.iter().cloned())
            .collect();
        all.sort_by_key(|e| e.seq);
        if let Some(n) = n {
            all.drain(..all.len().saturating_sub(n));
        }
        (all, g.log_seq)
    }

    /// Output from now on, for `follow=true`.
    pub fn subscribe_logs(&self) -> broadcast::Receiver<LogEntry> {
        self.logs_tx.subscribe()
    }
}
