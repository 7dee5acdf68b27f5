//! The in-process load generator: hyper HTTP/1.1 clients on a runtime of their own, one
//! keep-alive connection each, sending one request after another. It needs no `wrk`, so the
//! smoke run uses it, and it sends the cases `wrk` cannot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::cases::Body;
use crate::generators::Run;
use crate::knobs::Knobs;

/// The in-process generator's runtime threads are named this, to find their CPU time.
pub const LOADGEN_THREAD: &str = "loadgen";

/// What a load run of the in-process generator saw. Only responses completing inside the
/// measured window count, except `acked_events`, which counts every 200 of the run.
#[derive(Default)]
pub struct Tally {
    window: Duration,
    requests: u64,
    events: u64,
    errors: u64,
    acked_events: u64,
    /// Sorted once merged.
    latencies: Vec<Duration>,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.events += other.events;
        self.errors += other.errors;
        self.acked_events += other.acked_events;
        self.latencies.extend(other.latencies);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Nearest-rank percentile of the sorted latencies.
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    pub fn into_run(self) -> Run {
        Run {
            window: self.window,
            requests: self.requests,
            events: self.events,
            errors: self.errors,
            acked_events: self.acked_events,
            p50: self.percentile(0.50),
            p99: self.percentile(0.99),
            first_error: self.first_error,
            cpu: None,
        }
    }
}

/// Opens `conns` keep-alive connections to `addr`, then has each send requests one after
/// another through the warm-up and the measured window.
pub async fn run(addr: SocketAddr, conns: usize, bodies: Arc<[Body]>, knobs: &Knobs) -> Tally {
    // Connect first, so connection setup is in neither the warm-up nor the window.
    let mut senders = Vec::with_capacity(conns);
    let mut drivers = JoinSet::new();
    for _ in 0..conns {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        // Ends when the sender is dropped at the end of the run.
        drivers.spawn(async move {
            let _ = connection.await;
        });
        senders.push(sender);
    }
    let from = Instant::now() + knobs.warmup;
    let until = from + knobs.measure;
    let mut clients = JoinSet::new();
    for (i, sender) in senders.into_iter().enumerate() {
        clients.spawn(client(sender, bodies.clone(), i, from, until));
    }
    let mut total = Tally {
        window: knobs.measure,
        ..Tally::default()
    };
    while let Some(done) = clients.join_next().await {
        total.merge(done.expect("client task"));
    }
    while drivers.join_next().await.is_some() {}
    total.latencies.sort_unstable();
    total
}

/// One connection's requests, sent one at a time until `until`.
async fn client(
    mut sender: SendRequest<Full<Bytes>>,
    bodies: Arc<[Body]>,
    first: usize,
    from: Instant,
    until: Instant,
) -> Tally {
    let mut tally = Tally::default();
    for i in first.. {
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        let body = &bodies[i % bodies.len()];
        if let Err(e) = sender.ready().await {
            tally.error(format!("connection closed: {e}"));
            break;
        }
        let bytes = if body.unique_ids {
            // Per request, so this copy is part of the generator's cost (it prints its ceiling).
            let id = format!("{first}x{i}");
            Bytes::from(String::from_utf8_lossy(&body.bytes).replace("@ID@", &id))
        } else {
            body.bytes.clone()
        };
        let request = Request::post(body.path)
            .header(HOST, "127.0.0.1")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .expect("a valid request");
        let answer = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                match response.into_body().collect().await {
                    Ok(_) if status == StatusCode::OK => Ok(()),
                    Ok(b) => Err(format!(
                        "{} {status}: {}",
                        body.path,
                        String::from_utf8_lossy(&b.to_bytes())
                    )),
                    Err(e) => Err(format!("{} reading the response: {e}", body.path)),
                }
            }
            Err(e) => {
                tally.error(format!("{} request failed: {e}", body.path));
                break;
            }
        };
        let done = Instant::now();
        if answer.is_ok() {
            tally.acked_events += body.events;
        }
        if done < from || done > until {
            continue;
        }
        match answer {
            Ok(()) => {
                tally.requests += 1;
                tally.events += body.events;
                tally.latencies.push(done - sent);
            }
            Err(e) => tally.error(e),
        }
    }
    tally
}
