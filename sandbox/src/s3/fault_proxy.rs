//! A fault-injecting HTTP proxy to put in front of an S3 server: the network between
//! backup-agent and its S3 endpoints, made slow or broken on demand.
//!
//! It forwards every request as it came (the `Host` header included, so SigV4 signatures made
//! for the proxy's address still verify at the server) and streams bodies both ways. Faults:
//! latency before each request; requests whose path contains a pattern held until released (to
//! change the store between a listing and a read, or to act mid-transfer); the next N requests
//! answered with an S3 error (500 InternalError, 503 SlowDown, 507...); the next N answers cut
//! off after their headers, the connection dropped (a reset: the server may have acted on the
//! request, the client cannot know); DeleteObjects answers
//! that report some keys failed (S3's per-key `<Error>` in a 200 answer); a new upstream (a
//! server restarted on other ports). It also records each request's method, path and the
//! headers a test may need to see (server-side encryption), never a signature or a body.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;

/// What a test sees of a request that went through.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// The `x-amz-server-side-encryption*` headers.
    pub sse: BTreeMap<String, String>,
    /// The `Range` header, when the request had one.
    pub range: Option<String>,
}

/// The kinds of request a bill or a latency budget counts, in the order reports show them.
pub const KINDS: [&str; 8] = [
    "PUT",
    "POST",
    "GET",
    "ranged GET",
    "LIST",
    "HEAD",
    "DELETE",
    "DeleteObjects",
];

impl Seen {
    /// Which of [`KINDS`] this request is. A GET of a bucket (path-style, no key) is a
    /// listing; `POST` is a multipart upload's start or completion; `DeleteObjects` is the
    /// batch delete (a `POST ?delete`).
    pub fn kind(&self) -> &'static str {
        let (path, _) = self
            .target
            .split_once('?')
            .unwrap_or((self.target.as_str(), ""));
        let has_key = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .contains('/');
        match self.method.as_str() {
            "GET" if !has_key => "LIST",
            "GET" if self.range.is_some() => "ranged GET",
            "GET" => "GET",
            "HEAD" => "HEAD",
            "PUT" => "PUT",
            "DELETE" => "DELETE",
            "POST" if is_delete_objects(&self.target, &axum::http::Method::POST) => "DeleteObjects",
            "POST" => "POST",
            _ => "other",
        }
    }
}

/// Requests counted by kind; every kind of [`KINDS`] present, zero when none was seen.
pub fn tally(seen: &[Seen]) -> BTreeMap<&'static str, u64> {
    let mut out: BTreeMap<&'static str, u64> = KINDS.iter().map(|k| (*k, 0)).collect();
    for s in seen {
        *out.entry(s.kind()).or_default() += 1;
    }
    out
}

#[derive(Default)]
struct Faults {
    latency_ms: AtomicU64,
    fail_left: AtomicU32,
    fail_status: AtomicU32,
    hold: Mutex<Option<String>>,
    held: AtomicU32,
    /// Keys containing the pattern, reported failed by the next N DeleteObjects answers.
    refuse_deletes: Mutex<Option<(String, u32)>>,
    /// Answers of the next N requests cut off after their headers.
    reset_left: AtomicU32,
}

struct Shared {
    upstream: Mutex<String>,
    faults: Faults,
    released: tokio::sync::Notify,
    seen: Mutex<Vec<Seen>>,
    client: reqwest::Client,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`http://127.0.0.1:P`).
    pub fn start(upstream: &str) -> Result<FaultProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream.trim_end_matches('/').to_string()),
            faults: Faults::default(),
            released: tokio::sync::Notify::new(),
            seen: Mutex::new(vec![]),
            // No pooling across a restart of the server behind: a fresh connection per request
            // is what a restarted server would force anyway.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .context("building the proxy's client")?,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a bound listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
            // In-flight requests of a test that is over do not hold the test up.
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        Ok(FaultProxy {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Forward to another server from now on (one restarted on other ports).
    pub fn set_upstream(&self, upstream: &str) {
        *self.shared.upstream.lock().unwrap() = upstream.trim_end_matches('/').to_string();
    }

    /// Waits this long before forwarding each request.
    pub fn set_latency(&self, d: Duration) {
        self.shared
            .faults
            .latency_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answers the next `n` requests with `status` and the S3 error S3 gives for it, without
    /// forwarding them.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.shared
            .faults
            .fail_status
            .store(status as u32, Ordering::SeqCst);
        self.shared.faults.fail_left.store(n, Ordering::SeqCst);
    }

    /// Forwards the next `n` requests, then drops each connection after the answer's status
    /// and headers, before its body ends: what a reset mid-answer looks like to a client.
    pub fn reset_next(&self, n: u32) {
        self.shared.faults.reset_left.store(n, Ordering::SeqCst);
    }

    /// Answers still to be cut.
    pub fn resets_left(&self) -> u32 {
        self.shared.faults.reset_left.load(Ordering::SeqCst)
    }

    /// Requests still to be failed.
    pub fn failures_left(&self) -> u32 {
        self.shared.faults.fail_left.load(Ordering::SeqCst)
    }

    /// Holds every request whose path contains `pattern` until [`FaultProxy::release`]. A
    /// pattern may start with a method and a space (`PUT /packs/`): then only requests of that
    /// method are held.
    pub fn hold(&self, pattern: &str) {
        *self.shared.faults.hold.lock().unwrap() = Some(pattern.to_string());
    }

    /// Requests being held now.
    pub fn held(&self) -> u32 {
        self.shared.faults.held.load(Ordering::SeqCst)
    }

    /// Lets held requests (and later ones) through.
    pub fn release(&self) {
        *self.shared.faults.hold.lock().unwrap() = None;
        self.shared.released.notify_waiters();
    }

    /// The next `n` DeleteObjects answers that hold a key containing `pattern` report it failed
    /// (`InternalError`), as S3 does under load. The server has deleted them all the same: what
    /// is tested is that the client believes the answer and tries those keys again.
    pub fn refuse_deletes(&self, pattern: &str, n: u32) {
        *self.shared.faults.refuse_deletes.lock().unwrap() = Some((pattern.to_string(), n));
    }

    /// Every request forwarded or failed so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Ends every fault.
    pub fn clear(&self) {
        self.set_latency(Duration::ZERO);
        self.fail_next(0, 500);
        self.reset_next(0);
        self.release();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.release();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The error code S3 sends with a status.
fn s3_error(status: u16) -> (&'static str, &'static str) {
    match status {
        503 => ("SlowDown", "Please reduce your request rate."),
        507 => (
            "InsufficientStorage",
            "Not enough space on the storage device.",
        ),
        _ => (
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
    }
}

// Hop-by-hop headers belong to one connection, not to the request.
const HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

async fn forward(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    shared.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        target: target.clone(),
        sse: req
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-amz-server-side-encryption"))
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        range: req
            .headers()
            .get(axum::http::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });

    let latency = shared.faults.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let held = {
        let pattern = shared.faults.hold.lock().unwrap().clone();
        pattern.is_some_and(|p| holds(&p, method.as_str(), &target))
    };
    if held {
        let released = shared.released.notified();
        tokio::pin!(released);
        // Registered before counting, so a release right after the count is not missed.
        released.as_mut().enable();
        shared.faults.held.fetch_add(1, Ordering::SeqCst);
        if shared.faults.hold.lock().unwrap().is_some() {
            released.await;
        }
        shared.faults.held.fetch_sub(1, Ordering::SeqCst);
    }

    let failing = shared
        .faults
        .fail_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        let status = shared.faults.fail_status.load(Ordering::SeqCst) as u16;
        let (code, message) = s3_error(status);
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><Resource>{target}</Resource></Error>"
        );
        return Response::builder()
            .status(status)
            .header("content-type", "application/xml")
            .header("connection", "close")
            .body(Body::from(body))
            .expect("a valid response");
    }
    let upstream = shared.upstream.lock().unwrap().clone();
    let (parts, body) = req.into_parts();
    let mut out = shared
        .client
        .request(parts.method, format!("{upstream}{target}"));
    for (k, v) in &parts.headers {
        if !HOP.contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    let out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    let refusing = is_delete_objects(&target, &method).then(|| {
        match shared.faults.refuse_deletes.lock().unwrap().as_ref() {
            Some((pattern, n)) if *n > 0 => Some(pattern.clone()),
            _ => None,
        }
    });
    match out.send().await {
        Ok(resp) if refusing.as_ref().is_some_and(|p| p.is_some()) => {
            let pattern = refusing.flatten().expect("checked");
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            let refused = refuse_keys(&body, &pattern);
            // Only an answer that refused a key counts as one of the N.
            if refused != body {
                if let Some((_, n)) = shared.faults.refuse_deletes.lock().unwrap().as_mut() {
                    *n = n.saturating_sub(1);
                }
            }
            Response::builder()
                .status(status)
                .header("content-type", "application/xml")
                .body(Body::from(refused))
                .expect("a valid response")
        }
        Ok(resp) => {
            // A HEAD answer has no body to cut: its headers would arrive whole, only without
            // their length.
            let reset = method != axum::http::Method::HEAD
                && shared
                    .faults
                    .reset_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            let mut b = Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                // A cut answer has no length: the body is read (and fails) even when empty.
                let cut_length = reset && k == axum::http::header::CONTENT_LENGTH;
                if !HOP.contains(&k.as_str()) && !cut_length {
                    b = b.header(k, v);
                }
            }
            if reset {
                let cut = futures::stream::once(async {
                    Err::<axum::body::Bytes, _>(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "connection reset by the fault proxy",
                    ))
                });
                return b.body(Body::from_stream(cut)).expect("a valid response");
            }
            b.body(Body::from_stream(resp.bytes_stream()))
                .expect("a valid response")
        }
        // What a load balancer in front of a dead server answers.
        Err(e) => Response::builder()
            .status(502)
            .header("content-type", "text/plain")
            .body(Body::from(format!("proxy: upstream {upstream}: {e}")))
            .expect("a valid response"),
    }
}

/// A DeleteObjects request: `POST /bucket?delete`.
/// Whether a hold `pattern` (a path fragment, after an optional method and a space) takes a
/// request.
fn holds(pattern: &str, method: &str, target: &str) -> bool {
    match pattern.split_once(' ') {
        Some((m, rest)) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            m == method && target.contains(rest)
        }
        _ => target.contains(pattern),
    }
}

fn is_delete_objects(target: &str, method: &axum::http::Method) -> bool {
    method == axum::http::Method::POST
        && target
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|p| p == "delete" || p == "delete="))
}

/// Turns each `<Deleted>` entry whose key contains `pattern` into an `<Error>` entry.
fn refuse_keys(body: &str, pattern: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(start) = rest.find("<Deleted>") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find("</Deleted>") else {
            break;
        };
        let entry = &rest[start..start + len + "</Deleted>".len()];
        let key = entry
            .split_once("<Key>")
            .and_then(|(_, k)| k.split_once("</Key>"))
            .map(|(k, _)| k)
            .unwrap_or_default();
        if key.contains(pattern) {
            out.push_str(&format!(
                "<Error><Key>{key}</Key><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>"
            ));
        } else {
            out.push_str(entry);
        }
        rest = &rest[start + len + "</Deleted>".len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn refused_keys_become_errors_and_others_stay_deleted() {
        let body = "<DeleteResult><Deleted><Key>a/keep</Key></Deleted><Deleted><Key>a/bad-1</Key></Deleted></DeleteResult>";
        let out = super::refuse_keys(body, "bad");
        assert_eq!(
            out,
            "<DeleteResult><Deleted><Key>a/keep</Key></Deleted><Error><Key>a/bad-1</Key><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error></DeleteResult>"
        );
    }

    #[test]
    fn a_hold_may_name_the_method() {
        assert!(super::holds("/packs/", "GET", "/r/ckf/packs/ab"));
        assert!(super::holds("PUT /packs/", "PUT", "/r/ckf/packs/ab"));
        assert!(!super::holds("PUT /packs/", "GET", "/r/ckf/packs/ab"));
        assert!(!super::holds("PUT /packs/", "PUT", "/r/ckf/blobs/ab"));
    }

    #[test]
    fn requests_are_counted_by_the_kind_a_bill_names() {
        let seen = |method: &str, target: &str, range: Option<&str>| super::Seen {
            method: method.into(),
            target: target.into(),
            sse: Default::default(),
            range: range.map(str::to_string),
        };
        let cases = [
            (seen("GET", "/repo?list-type=2&prefix=ckf%2F", None), "LIST"),
            (seen("GET", "/repo/", None), "LIST"),
            (
                seen("GET", "/repo/ckf/packs/ab/abcd", Some("bytes=0-99")),
                "ranged GET",
            ),
            (seen("GET", "/repo/ckf/statefile.json", None), "GET"),
            (seen("HEAD", "/repo/ckf/x", None), "HEAD"),
            (
                seen("PUT", "/repo/ckf/x?partNumber=2&uploadId=u", None),
                "PUT",
            ),
            (seen("POST", "/repo/ckf/x?uploads", None), "POST"),
            (seen("POST", "/repo?delete", None), "DeleteObjects"),
            (seen("DELETE", "/repo/ckf/x", None), "DELETE"),
        ];
        for (s, kind) in &cases {
            assert_eq!(s.kind(), *kind, "{} {}", s.method, s.target);
        }
        let all: Vec<_> = cases.into_iter().map(|(s, _)| s).collect();
        let t = super::tally(&all);
        assert_eq!(t["LIST"], 2);
        assert_eq!(t.values().sum::<u64>(), 9);
        assert_eq!(t.len(), super::KINDS.len());
    }
}
