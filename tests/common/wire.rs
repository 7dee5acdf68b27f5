//! A recording reverse proxy for the SDK tests: it sits between a real client and the
//! service, forwards every request unchanged, and keeps what the client sent on the wire
//! (method, path, content type, content encoding, where the write key travels) with the
//! status it got back. The compatibility matrix in the README is checked against it.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One request as the client sent it, and the answer it was given.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// `Content-Type` as sent, or `-`.
    pub content_type: String,
    /// `Content-Encoding` as sent, or `-`.
    pub content_encoding: String,
    /// Where the write key was: `Basic`, `writeKey in body`, `Bearer`, `-`, …
    pub auth: String,
    pub status: u16,
    /// The query string, or empty.
    pub query: String,
    /// The body exactly as sent (to send it again).
    pub body: Bytes,
}

/// The proxy; stopped when dropped.
pub struct Wire {
    /// Its base URL (`http://127.0.0.1:PORT`), to give the client as its host.
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl Wire {
    /// A proxy on a free loopback port in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Wire {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (seen, client, upstream, count_tx) = (
                        seen.clone(),
                        client.clone(),
                        upstream.clone(),
                        count_tx.clone(),
                    );
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            let (seen, client, upstream, count_tx) = (
                                seen.clone(),
                                client.clone(),
                                upstream.clone(),
                                count_tx.clone(),
                            );
                            async move {
                                let (record, response) = forward(&client, &upstream, request).await;
                                seen.lock().unwrap().push(record);
                                count_tx.send_modify(|n| *n += 1);
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Wire {
            url,
            seen,
            count,
            task,
        }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded by [`super::WAIT`]) until a request answered `status` went through.
    pub async fn wait_for_status(&self, status: u16) {
        let mut count = self.count.clone();
        tokio::time::timeout(
            super::WAIT,
            count.wait_for(|_| self.seen().iter().any(|s| s.status == status)),
        )
        .await
        .unwrap_or_else(|_| panic!("no request was answered {status}: {:?}", self.seen()))
        .unwrap();
    }

    /// The distinct values of one field over the ingest requests (preflights and the
    /// SDK's own loads aside), sorted and joined with `, ` as the README's matrix writes
    /// them.
    pub fn summary(&self, field: impl Fn(&Seen) -> String) -> String {
        let values: BTreeSet<String> = self
            .seen()
            .iter()
            .filter(|s| s.method == "POST" || s.method == "GET" && s.path.starts_with("/v1/"))
            .map(field)
            .collect();
        values.into_iter().collect::<Vec<_>>().join(", ")
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    request: Request<Incoming>,
) -> (Seen, Response<Full<Bytes>>) {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| "-".to_owned(), str::to_owned)
    };
    let content_encoding = header("content-encoding");
    let auth = match parts.headers.get("authorization") {
        Some(v) => v
            .to_str()
            .unwrap_or("?")
            .split(' ')
            .next()
            .unwrap_or("?")
            .to_owned(),
        None if parts
            .uri
            .query()
            .is_some_and(|q| q.contains("writeKey=") || q.contains("api_key=")) =>
        {
            "key in query".to_owned()
        }
        None if decoded(&body, &content_encoding).contains("\"writeKey\"") => {
            "writeKey in body".to_owned()
        }
        None => "-".to_owned(),
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forwarded = client.request(parts.method.clone(), format!("{upstream}{path_and_query}"));
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive"
        ) {
            forwarded = forwarded.header(name, value);
        }
    }
    let mut seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        content_type: header("content-type"),
        content_encoding,
        auth,
        status: 502,
        query: parts.uri.query().unwrap_or("").to_owned(),
        body: body.clone(),
    };
    let response = match forwarded.body(body).send().await {
        Ok(upstream) => {
            seen.status = upstream.status().as_u16();
            let mut response = Response::builder().status(upstream.status());
            for (name, value) in upstream.headers() {
                if !matches!(
                    name.as_str(),
                    "connection" | "content-length" | "transfer-encoding"
                ) {
                    response = response.header(name, value);
                }
            }
            let body = upstream.bytes().await.unwrap_or_default();
            response.body(Full::new(body)).unwrap()
        }
        Err(_) => Response::builder()
            .status(502)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    };
    (seen, response)
}

/// The body as text, gunzipped when it says it is gzip (only to see where the key is).
fn decoded(body: &[u8], encoding: &str) -> String {
    if encoding.eq_ignore_ascii_case("gzip") {
        let mut out = String::new();
        let _ = flate2::read::MultiGzDecoder::new(body).read_to_string(&mut out);
        out
    } else {
        String::from_utf8_lossy(body).into_owned()
    }
}
