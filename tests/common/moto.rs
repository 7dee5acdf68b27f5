#![allow(dead_code)]
//! A private [moto](https://github.com/getmoto/moto) server per test, standing
//! in for Kinesis Data Firehose and S3 in the end-to-end tests.
//!
//! Each [`Moto`] is its own `python -m moto.server` process on its own port,
//! so tests run in parallel without sharing state; the process is killed when
//! the `Moto` is dropped. A missing moto installation makes the test *fail*
//! (panic) rather than skip, so a broken setup can't pass CI silently.
//!
//! All requests are plain HTTP; the AWS SDK for S3 is deliberately not used
//! (too slow to compile for a few test helpers).
//!
//! Things about moto that callers must know (checked against moto 5.2.5):
//! - One port serves every AWS service. moto ignores the Host header and picks
//!   the backend from the credential scope of the SigV4 `Authorization`
//!   header (`Credential=<key>/<date>/<region>/<service>/aws4_request`).
//!   Signatures are not verified, so a fake header is enough. An *unsigned*
//!   request falls through to S3: a Firehose call without the header is
//!   answered `200 OK` with an S3 `ListAllMyBucketsResult`.
//! - The region in that scope selects moto's per-region Firehose backend, so
//!   the code under test must sign for [`REGION`] or it will not find the
//!   delivery streams created here (S3 buckets are per partition, so the S3
//!   side does not care).
//! - Firehose delivers synchronously: each `PutRecord`/`PutRecordBatch` call
//!   writes one S3 object, with the records' bytes concatenated (no
//!   separator) before the call returns. `BufferingHints` and compression
//!   settings are ignored.
//! - Object keys are
//!   `{Prefix}YYYY/MM/DD/HH/{stream}-{version}-YYYY-MM-DD-HH-MM-SS-{uuid4}`
//!   (UTC, one-second resolution), so key order is delivery order only across
//!   different seconds; within a second it is random.
//! - Delivering into a bucket that does not exist fails the put with a bare
//!   `500 Internal Server Error` HTML page, and an empty `Records` list is
//!   accepted (and writes an empty object), unlike real Firehose.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Region every helper signs for. Code under test must use the same region
/// (see the module docs on routing).
pub const REGION: &str = "us-east-1";

/// moto's default account id: what ARNs contain when, as here, the access
/// key is not one moto knows.
pub const ACCOUNT_ID: &str = "123456789012";

/// Role ARN put into delivery stream configurations. moto does not check it
/// (there is no IAM enforcement), but the API requires one.
pub const FIREHOSE_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/firehose";

/// Environment variable naming the Python interpreter to run moto with,
/// overriding `<crate root>/.venv/bin/python`.
pub const PYTHON_ENV: &str = "MOTO_PYTHON";

/// How to fix a missing moto, repeated in every setup panic.
const SETUP_HINT: &str = "Run `scripts/ensure-moto.sh` from the repo root to create .venv with the \
     pinned moto[server] (or use the test command from README.md), or set MOTO_PYTHON to a python \
     that has moto[server] installed.";

/// Upper bound for the server to come up. Startup is ~0.5 s on an idle
/// machine; the margin is for loaded 2-core CI runners running tests in
/// parallel.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-request timeout, so a wedged server fails a test instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of moto's output to keep for failure messages. werkzeug logs one
/// line per request, so an unbounded buffer would grow with the test.
const LOG_TAIL_BYTES: usize = 64 * 1024;

/// What werkzeug prints once its socket is bound and listening.
const RUNNING_ON: &str = "Running on http://127.0.0.1:";

/// A running moto server, killed (and reaped) on drop.
pub struct Moto {
    child: Child,
    port: u16,
    logs: Arc<Mutex<Vec<u8>>>,
    http: reqwest::Client,
}

impl Moto {
    /// Starts a fresh moto server on a free port of 127.0.0.1 and waits until
    /// it answers.
    ///
    /// The interpreter is `$MOTO_PYTHON` if set, else
    /// `<CARGO_MANIFEST_DIR>/.venv/bin/python` (what `scripts/ensure-moto.sh`
    /// creates). Panics, with instructions, if it is missing or cannot import
    /// moto, and with moto's output if the server dies or is not up within
    /// 30 s.
    pub async fn start() -> Moto {
        let python = python_or_panic(std::env::var_os(PYTHON_ENV));
        Moto::start_with_python(&python).await
    }

    /// [`Moto::start`] with an explicit interpreter, bypassing discovery.
    pub async fn start_with_python(python: &Path) -> Moto {
        // Port 0 lets the kernel choose while moto holds the socket, so two
        // servers can never race for the same port (as they could if we
        // picked a free port, released it, and passed it on). werkzeug then
        // logs the real port, which doubles as the readiness signal: the
        // socket is listening by the time the line is printed.
        let mut child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", "0"])
            // Unbuffered so stdout (moto uses print() for some diagnostics)
            // reaches the log in order and before a crash.
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}. {SETUP_HINT}", python.display()));

        let logs = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = oneshot::channel();
        // Plain threads rather than tasks: the pipes must keep draining (or
        // moto blocks writing its request log) even while a current-thread
        // test runtime is busy elsewhere.
        if let Some(stdout) = child.stdout.take() {
            spawn_log_drain(stdout, Arc::clone(&logs), None);
        }
        if let Some(stderr) = child.stderr.take() {
            spawn_log_drain(stderr, Arc::clone(&logs), Some(port_tx));
        }

        let http = reqwest::Client::builder()
            // A developer's HTTP(S)_PROXY must not capture 127.0.0.1 traffic.
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("build reqwest client");
        // Owned from here on, so every panic below kills the server on unwind.
        let mut moto = Moto {
            child,
            port: 0,
            logs,
            http,
        };

        match tokio::time::timeout(READY_TIMEOUT, port_rx).await {
            Ok(Ok(port)) => moto.port = port,
            // stderr closed without the line: the server exited.
            Ok(Err(_)) => {
                let status = moto.stop();
                let logs = moto.logs();
                if logs.contains("No module named") || logs.contains("ImportError") {
                    panic!(
                        "{} cannot import moto.server, so moto[server] is not (fully) installed \
                         there. {SETUP_HINT}\n--- moto output ---\n{logs}",
                        python.display()
                    );
                }
                panic!(
                    "moto server ({}) exited with {status:?} before becoming ready. \
                     {SETUP_HINT}\n--- moto output ---\n{logs}",
                    python.display()
                );
            }
            Err(_) => {
                moto.stop();
                panic!(
                    "moto server ({}) did not report a listening port within {READY_TIMEOUT:?}\n\
                     --- moto output ---\n{}",
                    python.display(),
                    moto.logs()
                );
            }
        }

        // Confirm it really is moto answering HTTP on that port (this also
        // proves the log line was parsed right).
        let url = format!("{}/moto-api/", moto.endpoint_url());
        match moto.http.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => moto,
            Ok(resp) => panic!(
                "GET {url} answered {}\n--- moto output ---\n{}",
                resp.status(),
                moto.logs()
            ),
            Err(e) => panic!(
                "GET {url} failed: {e}\n--- moto output ---\n{}",
                moto.logs()
            ),
        }
    }

    /// Base URL for AWS clients (`endpoint_url`) and raw requests, e.g.
    /// `http://127.0.0.1:41234`. The same URL serves Firehose and S3.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The tail (last 64 KiB) of moto's stdout and stderr, including
    /// werkzeug's one-line-per-request access log; for failure messages.
    pub fn logs(&self) -> String {
        let logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&logs).into_owned()
    }

    /// Discards all state in every service (buckets, objects, delivery
    /// streams), for reusing one server across test phases.
    pub async fn reset(&self) {
        let url = format!("{}/moto-api/reset", self.endpoint_url());
        let resp = self.http.post(&url).send().await;
        self.expect_success("POST /moto-api/reset", resp).await;
    }

    /// Creates an S3 bucket (in [`REGION`], so no location constraint).
    pub async fn create_bucket(&self, bucket: &str) {
        let resp = self.s3(reqwest::Method::PUT, bucket, "").send().await;
        self.expect_success(&format!("S3 CreateBucket {bucket}"), resp)
            .await;
    }

    /// Uploads one object; for seeding buckets in tests.
    pub async fn put_object(&self, bucket: &str, key: &str, body: impl Into<Vec<u8>>) {
        let resp = self
            .s3(reqwest::Method::PUT, bucket, key)
            .body(body.into())
            .send()
            .await;
        self.expect_success(&format!("S3 PutObject {bucket}/{key}"), resp)
            .await;
    }

    /// Creates a `DirectPut` delivery stream that writes to `bucket` under the
    /// prefix `{name}/`. The bucket should exist before records are put:
    /// moto checks it only at delivery time, failing with a bare 500.
    pub async fn create_delivery_stream(&self, name: &str, bucket: &str) {
        self.firehose(
            "CreateDeliveryStream",
            &json!({
                "DeliveryStreamName": name,
                "DeliveryStreamType": "DirectPut",
                "ExtendedS3DestinationConfiguration": {
                    "RoleARN": FIREHOSE_ROLE_ARN,
                    "BucketARN": format!("arn:aws:s3:::{bucket}"),
                    "Prefix": format!("{name}/"),
                    // Ignored by moto (it delivers every put immediately) but
                    // kept realistic in case a future version honours them.
                    "BufferingHints": { "SizeInMBs": 1, "IntervalInSeconds": 60 },
                },
            }),
        )
        .await;
    }

    /// Calls a Firehose API action (e.g. `"DescribeDeliveryStream"`) over
    /// the JSON 1.1 protocol and returns the parsed response. Panics with
    /// the response body on a non-2xx status.
    pub async fn firehose(&self, action: &str, body: &Value) -> Value {
        let resp = self
            .http
            .post(format!("{}/", self.endpoint_url()))
            .header("X-Amz-Target", format!("Firehose_20150804.{action}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("Authorization", fake_authorization("firehose"))
            .body(body.to_string())
            .send()
            .await;
        let bytes = self
            .expect_success(&format!("Firehose {action}"), resp)
            .await;
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "Firehose {action}: response is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    /// Keys of every object in `bucket`, in S3's (lexicographic) order.
    pub async fn list_objects(&self, bucket: &str) -> Vec<String> {
        self.list_objects_in_pages(bucket, 1000).await
    }

    /// [`Moto::list_objects`] fetching at most `page_size` keys per request,
    /// following continuation tokens; public so pagination can be tested
    /// without creating 1000+ objects.
    pub async fn list_objects_in_pages(&self, bucket: &str, page_size: u32) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type", "2".to_owned()),
                ("max-keys", page_size.to_string()),
            ];
            if let Some(token) = &token {
                query.push(("continuation-token", token.clone()));
            }
            let resp = self
                .s3(reqwest::Method::GET, bucket, "")
                .query(&query)
                .send()
                .await;
            let body = self
                .expect_success(&format!("S3 ListObjectsV2 {bucket}"), resp)
                .await;
            let xml = String::from_utf8_lossy(&body);
            keys.extend(xml_elements(&xml, "Key").into_iter().map(xml_unescape));
            let truncated = xml_elements(&xml, "IsTruncated").first() == Some(&"true");
            token = xml_elements(&xml, "NextContinuationToken")
                .first()
                .map(|t| xml_unescape(t));
            if !truncated {
                return keys;
            }
            assert!(
                token.is_some(),
                "S3 ListObjectsV2 {bucket}: truncated page without NextContinuationToken: {xml}"
            );
        }
    }

    /// The bytes of one object; panics if it does not exist.
    pub async fn get_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        let resp = self.s3(reqwest::Method::GET, bucket, key).send().await;
        self.expect_success(&format!("S3 GetObject {bucket}/{key}"), resp)
            .await
    }

    /// Every object's bytes concatenated in key order: with one object per
    /// Firehose put, this is everything delivered to the bucket. Order
    /// between puts in the same second is arbitrary (see module docs), so
    /// compare contents order-insensitively when several puts are expected.
    pub async fn all_objects(&self, bucket: &str) -> Vec<u8> {
        let mut all = Vec::new();
        for key in self.list_objects(bucket).await {
            all.extend(self.get_object(bucket, &key).await);
        }
        all
    }

    /// A path-style S3 request (`/{bucket}/{key}`), signed (fakely) for S3
    /// so moto routes it to S3 however the default routing evolves.
    fn s3(&self, method: reqwest::Method, bucket: &str, key: &str) -> reqwest::RequestBuilder {
        let mut url = format!("{}/{bucket}", self.endpoint_url());
        if !key.is_empty() {
            url.push('/');
            url.push_str(&uri_encode_path(key));
        }
        self.http
            .request(method, url)
            .header("Authorization", fake_authorization("s3"))
    }

    /// Returns the body of a 2xx response; panics with status and body
    /// otherwise, since a failed setup step makes the rest of a test moot.
    async fn expect_success(
        &self,
        what: &str,
        resp: reqwest::Result<reqwest::Response>,
    ) -> Vec<u8> {
        let resp = resp.unwrap_or_else(|e| {
            panic!(
                "{what}: request failed: {e}\n--- moto output ---\n{}",
                self.logs()
            )
        });
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the response failed: {e}"));
        assert!(
            status.is_success(),
            "{what}: moto answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        body.to_vec()
    }

    /// Kills and reaps the server; idempotent.
    fn stop(&mut self) -> Option<ExitStatus> {
        // SIGKILL is fine: moto keeps all state in memory, nothing to flush.
        // kill() on an already-reaped child is a no-op.
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Reaping synchronously (moto dies at once on SIGKILL) leaves no
        // zombie and no listening socket behind when the test ends.
        self.stop();
    }
}

/// Where [`Moto::start`] finds its interpreter: `moto_python` (the value of
/// `$MOTO_PYTHON`; empty counts as unset) or else
/// `<manifest_dir>/.venv/bin/python`. Errors, with instructions, if that
/// file does not exist. Pure apart from the existence check, so it can be
/// unit-tested without touching the process environment.
pub fn locate_python(
    moto_python: Option<OsString>,
    manifest_dir: &Path,
) -> Result<PathBuf, String> {
    let default = manifest_dir.join(".venv").join("bin").join("python");
    match moto_python.filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            // is_file() follows symlinks, so a venv whose base interpreter
            // was removed counts as missing too.
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "{PYTHON_ENV} is set to {}, which does not exist. Unset it to use {}. \
                     {SETUP_HINT}",
                    path.display(),
                    default.display()
                ))
            }
        }
        None if default.is_file() => Ok(default),
        None => Err(format!(
            "moto is not installed for the end-to-end tests: {} does not exist. {SETUP_HINT}",
            default.display()
        )),
    }
}

/// [`locate_python`] for this crate, panicking with its message: what
/// [`Moto::start`] does with `std::env::var_os("MOTO_PYTHON")`.
pub fn python_or_panic(moto_python: Option<OsString>) -> PathBuf {
    locate_python(moto_python, Path::new(env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|msg| panic!("{msg}"))
}

/// A syntactically valid SigV4 `Authorization` header for `service` in
/// [`REGION`]. moto never checks the signature but routes on the credential
/// scope, so this is what makes a request reach the right service.
pub fn fake_authorization(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/{REGION}/{service}/aws4_request, \
         SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000"
    )
}

/// Copies a child pipe into the shared log tail on a thread. With `port_tx`,
/// also watches for werkzeug's "Running on" line and sends the port; if the
/// pipe closes first, the dropped sender tells the waiter the server died.
fn spawn_log_drain(
    pipe: impl Read + Send + 'static,
    logs: Arc<Mutex<Vec<u8>>>,
    mut port_tx: Option<oneshot::Sender<u16>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            // Until the port is found, each line is checked; the sender is
            // consumed by the first match.
            if let Some(tx) = port_tx.take() {
                match parse_running_on(&String::from_utf8_lossy(&line)) {
                    // The waiter may have given up (timeout); fine.
                    Some(port) => drop(tx.send(port)),
                    None => port_tx = Some(tx),
                }
            }
            let mut logs = logs.lock().unwrap_or_else(PoisonError::into_inner);
            logs.extend_from_slice(&line);
            if logs.len() > 2 * LOG_TAIL_BYTES {
                let excess = logs.len() - LOG_TAIL_BYTES;
                logs.drain(..excess);
            }
            line.clear();
        }
    });
}

/// The port from werkzeug's ` * Running on http://127.0.0.1:PORT` line.
pub fn parse_running_on(line: &str) -> Option<u16> {
    let rest = &line[line.find(RUNNING_ON)? + RUNNING_ON.len()..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok().filter(|&port| port != 0)
}

/// Inner texts of every `<tag>…</tag>` in `xml`, in document order (still
/// XML-escaped). Simple scanning is enough for S3's flat, attribute-free
/// response elements; `<tag/>` (empty) elements are skipped.
pub fn xml_elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    found
}

/// Undoes XML escaping: the five predefined entities and numeric character
/// references (S3 escapes keys; anything unrecognised is kept verbatim).
pub fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').and_then(|semi| {
            let ch = match &rest[1..semi] {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                entity => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .map(|hex| u32::from_str_radix(hex, 16))
                    .or_else(|| entity.strip_prefix('#').map(str::parse))
                    .and_then(Result::ok)
                    .and_then(char::from_u32),
            };
            ch.map(|ch| (ch, semi))
        });
        match decoded {
            Some((ch, semi)) => {
                out.push(ch);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Percent-encodes an object key for a URL path, keeping `/` so the key's
/// "directories" stay path segments, as S3 expects for path-style URLs.
pub fn uri_encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend([
                '%',
                char::from(HEX[usize::from(b >> 4)]),
                char::from(HEX[usize::from(b & 0xF)]),
            ]);
        }
    }
    out
}
