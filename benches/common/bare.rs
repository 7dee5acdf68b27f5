//! Bare hyper: an HTTP/1.1 server that reads each body and answers the same 200 JSON without
//! looking at it, the ceiling that HTTP handling and this machine allow.

use std::io::Read;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// What both servers answer an accepted request.
pub const OK_BODY: &[u8] = br#"{"status":"ok","accepted":1}"#;

/// Reads the whole body, answers 200 with [`OK_BODY`].
pub async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    request.into_body().collect().await?;
    let mut response = Response::new(Full::new(Bytes::from_static(OK_BODY)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Serves one connection with [`answer`].
pub async fn connection(stream: TcpStream) {
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service_fn(answer))
        .await;
}

/// Bare hyper as a process of its own (on a runtime like the service's: one worker per
/// core): listens on `addr`, logs `listening ingest=…` on stderr as the service does, and
/// serves until its stdin closes.
pub fn serve_until_stdin_closes(addr: &str) {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = rt.block_on(TcpListener::bind(addr)).expect("bind");
    eprintln!(
        "listening ingest={}",
        listener.local_addr().expect("local address")
    );
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(stream));
        }
    });
    // Blocks until the parent closes the pipe (or exits).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
