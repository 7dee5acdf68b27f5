//! The HTTP/1.1 accept loop shared by the ingest and admin listeners: one task per
//! connection, tracked so that shutdown can stop accepting, let requests in flight finish,
//! and give up on idle connections after a grace period. Slow clients are bounded by a
//! header read timeout (which is also the keep-alive idle timeout) and a connection cap.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Limits on the connections of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest wait for a request's headers (and for the next request on an idle connection).
    pub header_read_timeout: Duration,
    /// Most open connections; when reached, the loop stops accepting until one closes, and
    /// new clients wait in the kernel's listen backlog.
    pub max_connections: usize,
}

/// The address of the connection a request came on (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Serves `handler` on `listener` until `shutdown` fires, then stops accepting and waits up
/// to `grace` for open connections to finish their requests. Returns whether they all did.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    grace: Duration,
) -> bool
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    // Owns the connection tasks, so that when `serve` returns they have ended and dropped
    // their handles on the handler (and on the queue behind it).
    let tasks = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Usually EMFILE: back off briefly instead of spinning on the error.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let service = service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(Peer(peer));
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(request).await) }
                });
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                let span = tracing::debug_span!("connection", listener = name, %peer);
                tasks.spawn(
                    async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
            () = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    tasks.close();
    let drained = async {
        graceful.shutdown().await;
        tasks.wait().await;
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                listener = name,
                grace_secs = grace.as_secs_f64(),
                "connections still open after the grace period; closing them"
            );
            false
        }
    }
}
