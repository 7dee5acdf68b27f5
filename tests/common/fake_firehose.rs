#![allow(dead_code)] // Each integration test binary uses only part of this module.
//! In-process fake of Amazon Kinesis Data Firehose's `PutRecordBatch` JSON API.
//!
//! moto covers the happy path end to end; this fake injects what moto cannot:
//! throttling, 5xx, partial failures by position, slow answers, poisoned
//! records and outages in which connections are refused. It records every call
//! and checks each one against Firehose's real limits, so a test can assert
//! that the proxy never sends what real Firehose would reject. With
//! [`FakeFirehose::set_quota`] it meters a stream as Firehose meters a Direct PUT
//! stream (requests, records and bytes per second) and throttles what is over.
//!
//! ```text
//! let fake = FakeFirehose::start().await;
//! fake.push(Behavior::Throttling); // the first call is throttled, later ones succeed
//! // ... run the proxy with `sink.endpoint_url = fake.endpoint_url()`, post 3 events ...
//! timeout(Duration::from_secs(10), fake.wait_for_accepted_records(3)).await.unwrap();
//! assert!(fake.limit_violations().is_empty());
//! ```

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// `X-Amz-Target` of the only operation the fake implements.
const PUT_RECORD_BATCH_TARGET: &str = "Firehose_20150804.PutRecordBatch";
const AMZ_JSON: &str = "application/x-amz-json-1.1";

// Limits of PutRecordBatch, counted on decoded data (before base64):
// https://docs.aws.amazon.com/firehose/latest/APIReference/API_PutRecordBatch.html
/// Most records one `PutRecordBatch` call may carry.
pub const MAX_RECORDS_PER_CALL: usize = 500;
/// Most decoded bytes one call may carry in total (4 MiB).
pub const MAX_BYTES_PER_CALL: usize = 4 * 1024 * 1024;
/// Most decoded bytes one record may carry (1,000 KiB).
pub const MAX_RECORD_BYTES: usize = 1_024_000;

/// A Direct PUT delivery stream's throughput quota, as AWS documents it: "Amazon Data
/// Firehose quota" (<https://docs.aws.amazon.com/firehose/latest/dev/limits.html>). Kept
/// apart from the service's own copy so that the fake checks the service, not itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes per second, of the records' data before base64.
    pub bytes_per_sec: u64,
    /// `PutRecordBatch` calls per second.
    pub requests_per_sec: u64,
    /// Records per second.
    pub records_per_sec: u64,
}

/// us-east-1, us-west-2 and eu-west-1: 5 MiB/s, 2,000 requests/s, 500,000 records/s.
pub const QUOTA_LARGE_REGIONS: Quota = Quota {
    bytes_per_sec: 5 * 1024 * 1024,
    requests_per_sec: 2_000,
    records_per_sec: 500_000,
};

/// Every other region: 1 MiB/s, 1,000 requests/s, 100,000 records/s.
pub const QUOTA_OTHER_REGIONS: Quota = Quota {
    bytes_per_sec: 1024 * 1024,
    requests_per_sec: 1_000,
    records_per_sec: 100_000,
};

/// What the fake saw of one stream, counted as calls are answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Calls answered.
    pub calls: u64,
    /// Calls refused whole for being over the quota.
    pub throttled_calls: u64,
    /// Records answered with `ServiceUnavailableException` in a call that was
    /// otherwise taken, for being over the quota.
    pub throttled_records: u64,
    /// Records accepted.
    pub accepted_records: u64,
    /// Bytes (decoded) of the accepted records.
    pub accepted_bytes: u64,
}

/// How the fake answers one `PutRecordBatch` call; queued with [`FakeFirehose::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// 200, every record accepted (also what an empty script does).
    Ok,
    /// 400 `ServiceUnavailableException` "Slow down." for the whole call.
    ServiceUnavailable400,
    /// 500 `ServiceUnavailableException` "Slow down." for the whole call.
    ServiceUnavailable500,
    /// 400 `ThrottlingException` "Rate exceeded".
    Throttling,
    /// 500 with an HTML body, as a load balancer in front of AWS might answer:
    /// the client must cope with an error it cannot parse.
    Html500,
    /// 200 with these positions failed with this `ErrorCode` (e.g.
    /// `"ServiceUnavailableException"`, `"InternalFailure"`); the other records are
    /// accepted. Positions past the end or repeated are ignored, so
    /// `FailedPutCount` is the number of distinct positions that exist.
    FailPositions(Vec<usize>, String),
    /// Wait this long, then answer like [`Behavior::Ok`]. The records count as
    /// accepted when the handler answers, whether or not the client was still
    /// there to read it (a real Firehose may also have stored what a timed-out
    /// client will send again). If the fake goes down during the wait, the call
    /// is dropped unrecorded.
    Delay(Duration),
    /// 400 `ResourceNotFoundException`, as for a delivery stream that does not exist.
    ResourceNotFound,
}

/// How the fake answered a recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// 200 with `FailedPutCount: 0`.
    Success,
    /// 200 with these positions (ascending) failed; the others were accepted.
    PartialFailure {
        /// Positions of the records answered with an `ErrorCode`.
        failed: Vec<usize>,
    },
    /// The whole call failed; nothing was accepted.
    Rejected {
        /// HTTP status of the answer.
        status: u16,
        /// The `__type` of the error, `None` for [`Behavior::Html500`].
        error_type: Option<String>,
    },
}

/// One `PutRecordBatch` call as the fake received and answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `DeliveryStreamName` of the call.
    pub stream: String,
    /// Each record's `Data`, base64-decoded, in order.
    pub records: Vec<Vec<u8>>,
    /// What the fake answered.
    pub outcome: CallOutcome,
}

/// A running fake Firehose on `127.0.0.1` and an ephemeral port.
///
/// Clones share one server and one record of calls. The server stops when the
/// last clone is dropped, or at once on [`FakeFirehose::shutdown`].
#[derive(Clone)]
pub struct FakeFirehose {
    shared: Arc<Shared>,
    // A separate Arc whose Drop stops the server: connection tasks hold `shared`,
    // so a Drop on `Shared` would never run while the server is up.
    server: Arc<Server>,
}

/// What the request handlers and the test both see.
struct Shared {
    state: Mutex<State>,
    /// Counters the `wait_for_*` methods wait on; updated under the `state` lock so
    /// they never run ahead of what `calls()` shows.
    progress: watch::Sender<Progress>,
}

struct State {
    script: VecDeque<Behavior>,
    poison: Option<Vec<u8>>,
    calls: Vec<Call>,
    violations: Vec<String>,
    meters: HashMap<String, Meter>,
    stats: HashMap<String, StreamStats>,
    /// `false`: calls are recorded without their records' data (long measurements).
    keep_records: bool,
    /// How long every call takes to answer, as real Firehose takes tens of milliseconds.
    latency: Duration,
}

impl Default for State {
    fn default() -> Self {
        State {
            script: VecDeque::new(),
            poison: None,
            calls: Vec::new(),
            violations: Vec::new(),
            meters: HashMap::new(),
            stats: HashMap::new(),
            keep_records: true,
            latency: Duration::ZERO,
        }
    }
}

/// One stream's quota as token buckets of one second of each rate, refilled continuously:
/// AWS states the quotas per second and throttles above them; a call that finds the buckets
/// short is answered as Firehose answers then (see [`Meter::admit`]).
struct Meter {
    quota: Quota,
    /// Requests, records, bytes.
    tokens: [f64; 3],
    refilled: tokio::time::Instant,
}

/// How much of a call a [`Meter`] lets through.
enum Admit {
    All,
    /// The first `n` records; the rest are answered `ServiceUnavailableException` per record.
    First(usize),
    /// None: the call is refused whole with `ServiceUnavailableException` "Slow down.".
    Nothing,
}

impl Meter {
    fn new(quota: Quota) -> Meter {
        let mut meter = Meter {
            quota,
            tokens: [0.0; 3],
            refilled: tokio::time::Instant::now(),
        };
        meter.tokens = meter.rates();
        meter
    }

    fn rates(&self) -> [f64; 3] {
        [
            self.quota.requests_per_sec as f64,
            self.quota.records_per_sec as f64,
            self.quota.bytes_per_sec as f64,
        ]
    }

    /// A call without a request token is refused whole; otherwise its records are taken in
    /// order while record and byte tokens last, and the rest fail one by one, which is how
    /// PutRecordBatch reports records it could not take ("FailedPutCount", per-record
    /// `ErrorCode` `ServiceUnavailableException`); a call none of whose records fit is
    /// refused whole.
    fn admit(&mut self, records: &[Vec<u8>]) -> Admit {
        let now = tokio::time::Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let rates = self.rates();
        for (tokens, rate) in self.tokens.iter_mut().zip(rates) {
            *tokens = (*tokens + rate * elapsed).min(rate);
        }
        if self.tokens[0] < 1.0 {
            return Admit::Nothing;
        }
        self.tokens[0] -= 1.0;
        let mut taken = 0;
        for record in records {
            let len = record.len() as f64;
            if self.tokens[1] < 1.0 || self.tokens[2] < len {
                break;
            }
            self.tokens[1] -= 1.0;
            self.tokens[2] -= len;
            taken += 1;
        }
        match taken {
            0 => Admit::Nothing,
            n if n == records.len() => Admit::All,
            n => Admit::First(n),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    received: usize,
    calls: usize,
    accepted: usize,
}

struct Server {
    addr: SocketAddr,
    // An async mutex: `set_down` holds it across binding and stopping, so
    // concurrent calls cannot leave two accept loops or none.
    running: tokio::sync::Mutex<Option<Running>>,
}

/// The accept loop of one "up" period.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl FakeFirehose {
    /// Binds `127.0.0.1:0` and starts serving. Panics if it cannot bind.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Firehose on 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of a bound listener");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            progress: watch::Sender::new(Progress::default()),
        });
        let running = Running::spawn(listener, Arc::clone(&shared));
        let running = tokio::sync::Mutex::new(Some(running));
        Self {
            shared,
            server: Arc::new(Server { addr, running }),
        }
    }

    /// `http://127.0.0.1:PORT`, for the SDK's endpoint override. Stays the same
    /// across [`FakeFirehose::set_down`].
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The address the fake listens on (while up).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Queues a one-shot behaviour for a future `PutRecordBatch` call. Each call
    /// consumes one, even one rejected for limits, poison or a malformed body, so
    /// the script lines up with the calls; an empty script means success.
    pub fn push(&self, behavior: Behavior) {
        self.shared.lock().script.push_back(behavior);
    }

    /// Meters `stream` to `quota` from now on: calls over it are throttled as
    /// [`Meter::admit`] says. Each call still consumes a scripted behaviour, which
    /// applies only if the quota let the whole call through.
    pub fn set_quota(&self, stream: &str, quota: Quota) {
        self.shared
            .lock()
            .meters
            .insert(stream.to_owned(), Meter::new(quota));
    }

    /// What the fake saw of `stream` so far.
    pub fn stream_stats(&self, stream: &str) -> StreamStats {
        self.shared
            .lock()
            .stats
            .get(stream)
            .copied()
            .unwrap_or_default()
    }

    /// Every later call is answered after `latency` (on top of a scripted delay).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// `false`: record calls without their data from now on (a long measurement would
    /// otherwise keep every byte); counts and [`FakeFirehose::stream_stats`] still hold.
    pub fn keep_records(&self, keep: bool) {
        self.shared.lock().keep_records = keep;
    }

    /// Any later call with a record whose decoded data contains `marker` fails as a
    /// whole with 400 `InvalidArgumentException` "Record is poisoned", whatever the
    /// script says. An empty marker poisons every call; `None` turns it off.
    pub fn set_poison(&self, marker: Option<Vec<u8>>) {
        self.shared.lock().poison = marker;
    }

    /// Takes Firehose down or brings it back up.
    ///
    /// Down closes the listener, so `connect()` gets ECONNREFUSED, and drops every
    /// open connection, keep-alive ones included. Up binds the same port again
    /// (tokio sets `SO_REUSEADDR`, so connections in TIME_WAIT do not block it).
    /// Returns once the change is complete, so the next connect sees it; a client's
    /// pooled connection may still fail with "connection closed" rather than a
    /// connect error until the client notices. Panics if the port was taken
    /// while the fake was down.
    pub async fn set_down(&self, down: bool) {
        let mut running = self.server.running.lock().await;
        match (down, running.take()) {
            (true, Some(up)) => up.stop().await,
            (false, None) => {
                let listener = TcpListener::bind(self.server.addr)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("re-bind the fake Firehose on {}: {e}", self.server.addr)
                    });
                *running = Some(Running::spawn(listener, Arc::clone(&self.shared)));
            }
            (_, unchanged) => *running = unchanged,
        }
    }

    /// Stops the server for every clone and waits until it has stopped.
    pub async fn shutdown(self) {
        self.set_down(true).await;
    }

    /// Every `PutRecordBatch` call answered so far (malformed ones excepted), in
    /// the order their answers were decided.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// Number of calls [`FakeFirehose::calls`] would return.
    pub fn call_count(&self) -> usize {
        self.shared.progress.borrow().calls
    }

    /// `(stream, data)` of every record answered as successfully put, in order.
    /// A record sent again after a failure appears again, as it would in S3.
    pub fn accepted(&self) -> Vec<(String, Vec<u8>)> {
        let state = self.shared.lock();
        let mut accepted = Vec::new();
        for call in &state.calls {
            let failed: &[usize] = match &call.outcome {
                CallOutcome::Success => &[],
                CallOutcome::PartialFailure { failed } => failed,
                CallOutcome::Rejected { .. } => continue,
            };
            for (i, data) in call.records.iter().enumerate() {
                if !failed.contains(&i) {
                    accepted.push((call.stream.clone(), data.clone()));
                }
            }
        }
        accepted
    }

    /// Number of records [`FakeFirehose::accepted`] would return.
    pub fn accepted_count(&self) -> usize {
        self.shared.progress.borrow().accepted
    }

    /// Every request that real Firehose would have refused as invalid: broken
    /// limits (more than 500 records, more than 4 MiB, a record over 1,000 KiB,
    /// no records) and malformed bodies. Tests should assert it stays empty.
    pub fn limit_violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }

    /// Completes once at least `n` records have been accepted in total. Wrap it in
    /// `tokio::time::timeout`: it waits forever otherwise.
    pub async fn wait_for_accepted_records(&self, n: usize) {
        self.wait_for(|p| p.accepted >= n).await;
    }

    /// Completes once at least `n` calls have been recorded. Wrap it in
    /// `tokio::time::timeout`: it waits forever otherwise.
    pub async fn wait_for_calls(&self, n: usize) {
        self.wait_for(|p| p.calls >= n).await;
    }

    /// Completes once at least `n` `PutRecordBatch` requests have arrived, answered
    /// or not: e.g. to act while a [`Behavior::Delay`] call is in flight.
    pub async fn wait_for_received(&self, n: usize) {
        self.wait_for(|p| p.received >= n).await;
    }

    async fn wait_for(&self, done: impl FnMut(&Progress) -> bool) {
        let mut progress = self.shared.progress.subscribe();
        // Cannot fail: `self` keeps the sender alive.
        let _ = progress.wait_for(done).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Drop cannot await; aborting the accept loop drops its listener and its
        // JoinSet, which aborts every connection task.
        if let Some(up) = self.running.get_mut().take() {
            up.task.abort();
        }
    }
}

impl Running {
    fn spawn(listener: TcpListener, shared: Arc<Shared>) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, shared, stopped));
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        // Err only if the loop panicked or was aborted; either way it has stopped.
        let _ = self.task.await;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, so poisoning would be a bug here.
        self.state
            .lock()
            .expect("fake Firehose state lock poisoned")
    }

    fn record(&self, mut call: Call, throttled: Throttled) {
        let mut state = self.lock();
        let failed: &[usize] = match &call.outcome {
            CallOutcome::Success => &[],
            CallOutcome::PartialFailure { failed } => failed,
            CallOutcome::Rejected { .. } => &[],
        };
        let rejected = matches!(call.outcome, CallOutcome::Rejected { .. });
        let accepted_bytes: usize = if rejected {
            0
        } else {
            let (mut next, mut bytes) = (failed.iter().peekable(), 0);
            for (i, r) in call.records.iter().enumerate() {
                if next.peek() == Some(&&i) {
                    next.next();
                } else {
                    bytes += r.len();
                }
            }
            bytes
        };
        let accepted = if rejected {
            0
        } else {
            call.records.len() - failed.len()
        };
        let stats = state.stats.entry(call.stream.clone()).or_default();
        stats.calls += 1;
        stats.accepted_records += accepted as u64;
        stats.accepted_bytes += accepted_bytes as u64;
        match throttled {
            Throttled::No => {}
            Throttled::Call => stats.throttled_calls += 1,
            Throttled::Records(n) => stats.throttled_records += n as u64,
        }
        if !state.keep_records {
            call.records = Vec::new();
        }
        state.calls.push(call);
        self.progress.send_modify(|p| {
            p.calls += 1;
            p.accepted += accepted;
        });
    }
}

/// Accepts until told to stop, then closes the listener and every connection
/// before returning, so `set_down(true)` is complete when it returns.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                // Accept errors (e.g. EMFILE) concern one connection; keep serving.
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                let service = service_fn(move |req| handle(Arc::clone(&shared), req));
                connections.spawn(async move {
                    // By default hyper drops the handler when the client hangs up
                    // mid-request, so a `Delay` call whose client timed out would
                    // vanish. Real Firehose finishes the work whether or not the
                    // caller still listens; half-close keeps the handler running.
                    // Errors here are the client's (reset, timeout): nothing to report.
                    let _ = http1::Builder::new()
                        .half_close(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            // Reap finished connections so a long test does not accumulate them.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordBatchInput {
    delivery_stream_name: String,
    records: Vec<RecordInput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordInput {
    data: String,
}

type HttpResponse = Response<Full<Bytes>>;

const INVALID_ARGUMENT: &str = "InvalidArgumentException";
const SERVICE_UNAVAILABLE: &str = "ServiceUnavailableException";
const HTML_500: &str = "<html><body>Internal Server Error</body></html>";

/// `Ok`: answer 200 with these positions failed with this `ErrorCode`.
/// `Err`: fail the call with this status, `__type` (`None`: HTML) and message.
type Decision = Result<(Vec<usize>, String), (u16, Option<&'static str>, String)>;

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok());
    if req.method() != Method::POST || target != Some(PUT_RECORD_BATCH_TARGET) {
        let message = format!("The fake implements {PUT_RECORD_BATCH_TARGET}, not {target:?}");
        return Ok(aws_error(400, "UnknownOperationException", &message));
    }
    let behavior = {
        let mut state = shared.lock();
        shared.progress.send_modify(|p| p.received += 1);
        state.script.pop_front().unwrap_or(Behavior::Ok)
    };
    // `collect` reads both chunked and Content-Length bodies.
    let decoded = match req.into_body().collect().await {
        Ok(body) => decode(&body.to_bytes()),
        Err(e) => Err(format!("reading the body: {e}")),
    };
    let (stream, records) = match decoded {
        Ok(decoded) => decoded,
        Err(message) => {
            let violation = format!("malformed PutRecordBatch: {message}");
            shared.lock().violations.push(violation);
            return Ok(aws_error(400, "SerializationException", &message));
        }
    };
    let (decision, throttled) = decide(&shared, &stream, &records, &behavior);
    let latency = shared.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (response, outcome) = match decision {
        Ok((failed, error_code)) => {
            if let Behavior::Delay(delay) = behavior {
                tokio::time::sleep(delay).await;
            }
            put_result(records.len(), &failed, &error_code)
        }
        Err((status, error_type, message)) => rejected(status, error_type, &message),
    };
    let call = Call {
        stream,
        records,
        outcome,
    };
    shared.record(call, throttled);
    Ok(response)
}

/// Whether a call met its stream's quota.
#[derive(Debug, Clone, Copy)]
enum Throttled {
    No,
    /// Refused whole.
    Call,
    /// This many of its records were refused.
    Records(usize),
}

/// Limits and poison come first (real Firehose validates a call before anything
/// else can happen to it), then the stream's quota, then the scripted behaviour.
fn decide(
    shared: &Shared,
    stream: &str,
    records: &[Vec<u8>],
    behavior: &Behavior,
) -> (Decision, Throttled) {
    let mut state = shared.lock();
    let broken = broken_limits(records);
    if !broken.is_empty() {
        let violations = broken.iter().map(|b| format!("stream {stream}: {b}"));
        state.violations.extend(violations);
        let refused = Err((400, Some(INVALID_ARGUMENT), broken.join("; ")));
        return (refused, Throttled::No);
    }
    let poison = state.poison.as_deref();
    if poison.is_some_and(|p| records.iter().any(|r| contains(r, p))) {
        let refused = Err((400, Some(INVALID_ARGUMENT), "Record is poisoned".into()));
        return (refused, Throttled::No);
    }
    if let Some(meter) = state.meters.get_mut(stream) {
        match meter.admit(records) {
            Admit::All => {}
            Admit::First(n) => {
                let over = (n..records.len()).collect();
                let throttled = Throttled::Records(records.len() - n);
                return (Ok((over, SERVICE_UNAVAILABLE.to_owned())), throttled);
            }
            Admit::Nothing => {
                let refused = Err((400, Some(SERVICE_UNAVAILABLE), "Slow down.".into()));
                return (refused, Throttled::Call);
            }
        }
    }
    (scripted(stream, behavior), Throttled::No)
}

/// The scripted answer to a call that passed the checks.
fn scripted(stream: &str, behavior: &Behavior) -> Decision {
    let (status, error_type, message) = match behavior {
        Behavior::Ok | Behavior::Delay(_) => return Ok((Vec::new(), String::new())),
        Behavior::FailPositions(failed, code) => return Ok((failed.clone(), code.clone())),
        Behavior::ServiceUnavailable400 => (400, SERVICE_UNAVAILABLE, "Slow down."),
        Behavior::ServiceUnavailable500 => (500, SERVICE_UNAVAILABLE, "Slow down."),
        Behavior::Throttling => (400, "ThrottlingException", "Rate exceeded"),
        Behavior::Html500 => return Err((500, None, HTML_500.into())),
        Behavior::ResourceNotFound => {
            let message = format!("Firehose {stream} not found");
            return Err((400, Some("ResourceNotFoundException"), message));
        }
    };
    Err((status, Some(error_type), message.into()))
}

/// The request's stream name and decoded records, or why real Firehose would not parse it.
fn decode(body: &[u8]) -> Result<(String, Vec<Vec<u8>>), String> {
    let input: PutRecordBatchInput =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let mut records = Vec::with_capacity(input.records.len());
    for (i, record) in input.records.iter().enumerate() {
        let data = BASE64.decode(&record.data);
        records.push(data.map_err(|e| format!("record {i}: invalid base64: {e}"))?);
    }
    Ok((input.delivery_stream_name, records))
}

/// Which of PutRecordBatch's limits the call breaks; empty if none.
fn broken_limits(records: &[Vec<u8>]) -> Vec<String> {
    let mut broken = Vec::new();
    let n = records.len();
    if n == 0 {
        broken.push("Records must contain at least 1 record".to_owned());
    }
    if n > MAX_RECORDS_PER_CALL {
        broken.push(format!("{n} records, more than {MAX_RECORDS_PER_CALL}"));
    }
    if let Some(i) = records.iter().position(|r| r.len() > MAX_RECORD_BYTES) {
        let len = records[i].len();
        broken.push(format!(
            "record {i} has {len} bytes, more than {MAX_RECORD_BYTES}"
        ));
    }
    let total: usize = records.iter().map(Vec::len).sum();
    if total > MAX_BYTES_PER_CALL {
        broken.push(format!("{total} bytes, more than {MAX_BYTES_PER_CALL}"));
    }
    broken
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    // `windows(0)` panics, and an empty marker is contained everywhere anyway.
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A 200 `PutRecordBatch` answer with `failed` positions given `error_code`.
fn put_result(n: usize, failed: &[usize], error_code: &str) -> (HttpResponse, CallOutcome) {
    let mut failed: Vec<usize> = failed.iter().copied().filter(|&i| i < n).collect();
    failed.sort_unstable();
    failed.dedup();
    let answers: Vec<_> = (0..n)
        .map(|i| match failed.binary_search(&i) {
            Ok(_) => {
                json!({"ErrorCode": error_code, "ErrorMessage": format!("Injected {error_code}")})
            }
            Err(_) => json!({"RecordId": format!("fake-record-{:016x}", next_id())}),
        })
        .collect();
    let body =
        json!({"FailedPutCount": failed.len(), "Encrypted": false, "RequestResponses": answers});
    let response = respond(200, AMZ_JSON, None, body.to_string());
    let outcome = if failed.is_empty() {
        CallOutcome::Success
    } else {
        CallOutcome::PartialFailure { failed }
    };
    (response, outcome)
}

/// A failed call: an AWS JSON error (`__type` in the body and in
/// `x-amzn-ErrorType`), or HTML if there is no `error_type`.
fn rejected(status: u16, error_type: Option<&str>, message: &str) -> (HttpResponse, CallOutcome) {
    let response = match error_type {
        Some(error_type) => aws_error(status, error_type, message),
        None => respond(status, "text/html", None, message.to_owned()),
    };
    let error_type = error_type.map(str::to_owned);
    (response, CallOutcome::Rejected { status, error_type })
}

fn aws_error(status: u16, error_type: &str, message: &str) -> HttpResponse {
    let body = json!({"__type": error_type, "message": message}).to_string();
    respond(status, AMZ_JSON, Some(error_type), body)
}

fn respond(
    status: u16,
    content_type: &str,
    error_type: Option<&str>,
    body: String,
) -> HttpResponse {
    let response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header("x-amzn-RequestId", format!("fake-request-{}", next_id()));
    let response = match error_type {
        Some(error_type) => response.header("x-amzn-ErrorType", error_type),
        None => response,
    };
    let body = Full::new(Bytes::from(body));
    response
        .body(body)
        .expect("valid statuses and header values")
}

/// Process-wide, so ids stay unique across fakes and re-binds.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
