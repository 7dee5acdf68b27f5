//! The sub-commands of the binary: offline tools on the queue directory, the drain of an
//! orphaned queue and the container's health check. (`anyhow` is fine here: this is the
//! command line, not the library.)

use firehose_edge::config::Config;
use firehose_edge::queue::Queue;

/// What `dead-letters` does.
#[derive(Debug, clap::Subcommand)]
pub enum DeadLetterAction {
    /// Print the dead-lettered records (NDJSON) to stdout, counts to stderr.
    List,
    /// Move the dead-lettered records back into the queue, to be delivered at the next start.
    Replay,
}

/// What `queue` does.
#[derive(Debug, clap::Subcommand)]
pub enum QueueAction {
    /// Check a stopped queue without changing it: sled opens, every entry passes its
    /// checksum, and every stream holds what the manifest says was acknowledged and not
    /// delivered. Prints a line per stream; exits 1 on any damage or shortfall.
    Verify,
}

/// `queue verify`.
pub fn queue(config: &Config, action: &QueueAction) -> anyhow::Result<()> {
    match action {
        QueueAction::Verify => {
            let streams = config.stream_names();
            let report = Queue::verify(&config.queue, &streams)?;
            println!("manifest: {}", report.manifest);
            for s in &report.streams {
                let expected = s.expected.map_or("unknown".to_owned(), |e| e.to_string());
                println!(
                    "{}: queued={} dead_letters={} expected={expected} missing={} damaged_entries={} quarantined={} summary={}",
                    s.stream,
                    s.queued,
                    s.dead_letters,
                    s.missing,
                    s.damaged_entries,
                    s.quarantined,
                    s.summary
                );
            }
            anyhow::ensure!(
                !report.damaged(),
                "the queue at {} is damaged",
                config.queue.path.display()
            );
            Ok(())
        }
    }
}

pub fn dead_letters(
    config: &Config,
    action: &DeadLetterAction,
    only: Option<&str>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let streams = config.stream_names();
    if let Some(name) = only.filter(|n| !streams.iter().any(|s| s == n)) {
        anyhow::bail!(
            "{name} is not a configured stream (streams: {})",
            streams.join(", ")
        );
    }
    let queue = Queue::open(&config.queue, &streams).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the queue at {} (is the service still running?): {e}",
            config.queue.path.display()
        )
    })?;
    let mut out = std::io::stdout().lock();
    for stream in streams
        .iter()
        .filter(|s| only.is_none_or(|o| o == s.as_str()))
    {
        match action {
            DeadLetterAction::List => {
                let entries = queue.dead_letters(stream)?;
                for entry in &entries {
                    for line in entry.iter_lines() {
                        out.write_all(line)?;
                    }
                }
                let n: u64 = entries.iter().map(|e| u64::from(e.count)).sum();
                eprintln!("{stream}: {n} dead-lettered records");
            }
            DeadLetterAction::Replay => {
                let n = queue.replay_dead_letters(stream)?;
                eprintln!("{stream}: {n} records moved back to the queue");
            }
        }
    }
    queue.close()?;
    Ok(())
}

/// `GET /healthz` on the admin port of this host, with a short timeout.
pub fn healthcheck(config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = std::time::Duration::from_secs(3);
    let (status, _) = runtime.block_on(admin_call(
        config,
        http::Method::GET,
        "/healthz",
        None,
        timeout,
    ))?;
    anyhow::ensure!(
        status == http::StatusCode::OK,
        "{}/healthz answered {status}",
        admin_addr(config)
    );
    Ok(())
}

/// The admin listener of this host (an unspecified address is reached on loopback).
fn admin_addr(config: &Config) -> std::net::SocketAddr {
    let mut addr = config.admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// One request to the admin listener of this host, within `timeout`: `auth` is a body and
/// the admin key it is sent with. Returns the status and the body.
async fn admin_call(
    config: &Config,
    method: http::Method,
    path: &str,
    auth: Option<(&[u8], Vec<u8>)>,
    timeout: std::time::Duration,
) -> anyhow::Result<(http::StatusCode, bytes::Bytes)> {
    use http_body_util::{BodyExt, Full};
    let addr = admin_addr(config);
    let call = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| anyhow::anyhow!("{addr}{path}: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string());
        let mut body = Vec::new();
        if let Some((key, sent)) = auth {
            let mut bearer = b"Bearer ".to_vec();
            bearer.extend_from_slice(key);
            request = request
                .header(http::header::AUTHORIZATION, bearer)
                .header(http::header::CONTENT_TYPE, "application/json");
            body = sent;
        }
        let response = sender
            .send_request(request.body(Full::new(bytes::Bytes::from(body)))?)
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        connection.abort();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(timeout, call).await.map_err(|_| {
        anyhow::anyhow!(
            "{addr}{path} did not answer within {}",
            humantime::format_duration(timeout)
        )
    })?
}

/// What `suppress` does.
#[derive(Debug, clap::Subcommand)]
pub enum SuppressAction {
    /// Print the suppressed identifiers, one JSON object per line (`id`, `added_at_ms`,
    /// `pending`: its erasure not finished yet).
    List,
    /// Suppress identifiers (a deletion request): their events are no longer stored, and
    /// those still queued or dead-lettered are erased. Prints what was erased.
    Add {
        /// User identifiers (userId, anonymousId, distinct_id, Snowplow uid/duid, ...).
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Stop suppressing identifiers (their later events are stored again).
    Remove {
        /// User identifiers.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// How long `suppress` waits for a running service's answer (an erasure walks the queue).
const SUPPRESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// `suppress`: through the running service's admin API (with the admin key of `config`) when
/// it holds the queue, else on the queue directory itself.
pub fn suppress(config: &Config, action: &SuppressAction) -> anyhow::Result<()> {
    use firehose_edge::queue::QueueError;
    use firehose_edge::queue::lock::DirLock;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let answer = match DirLock::acquire(&config.queue.path) {
        Err(QueueError::InUse { .. }) => runtime.block_on(suppress_online(config, action))?,
        Err(e) => return Err(e.into()),
        Ok(lock) => {
            drop(lock);
            runtime.block_on(suppress_offline(config, action))?
        }
    };
    match (action, answer) {
        (SuppressAction::List, serde_json::Value::Object(mut o)) => {
            let listed = o.remove("suppressed").unwrap_or_default();
            for entry in listed.as_array().into_iter().flatten() {
                println!("{entry}");
            }
        }
        (_, answer) => println!("{answer}"),
    }
    Ok(())
}

async fn suppress_online(
    config: &Config,
    action: &SuppressAction,
) -> anyhow::Result<serde_json::Value> {
    let key = config.admin.api_key()?.ok_or_else(|| {
        anyhow::anyhow!(
            "the service holds the queue at {}: its admin API needs the admin key (admin.api_key_file or admin.api_key_env in this configuration)",
            config.queue.path.display()
        )
    })?;
    let (method, ids) = match action {
        SuppressAction::List => (http::Method::GET, None),
        SuppressAction::Add { ids } => (http::Method::POST, Some(ids)),
        SuppressAction::Remove { ids } => (http::Method::DELETE, Some(ids)),
    };
    let body = ids.map_or_else(Vec::new, |ids| {
        serde_json::to_vec(&serde_json::json!({ "ids": ids })).expect("serializes")
    });
    let (status, body) = admin_call(
        config,
        method,
        "/suppressions",
        Some((&key, body)),
        SUPPRESS_TIMEOUT,
    )
    .await?;
    anyhow::ensure!(
        status == http::StatusCode::OK,
        "the admin API answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(serde_json::from_slice(&body)?)
}

async fn suppress_offline(
    config: &Config,
    action: &SuppressAction,
) -> anyhow::Result<serde_json::Value> {
    use firehose_edge::suppression::Suppressions;
    use std::sync::Arc;
    let queue = Queue::open(&config.queue, &config.stream_names())?;
    let policies = Arc::new(firehose_edge::policy::Policies::new(config)?);
    let suppressions = Suppressions::open(queue.clone(), config, policies)?;
    let answer = match action {
        SuppressAction::List => serde_json::json!({ "suppressed": suppressions.list()? }),
        SuppressAction::Add { ids } => serde_json::to_value(suppressions.add(ids.clone()).await?)?,
        SuppressAction::Remove { ids } => {
            serde_json::json!({"removed": suppressions.remove(ids.clone()).await?})
        }
    };
    drop(suppressions);
    queue.close()?;
    Ok(answer)
}

/// `drain`: deliver the whole queue, then exit 0; `stop_signal` installs the signal handlers
/// that end it early (exit 1).
pub fn drain<S, F>(config: Config, stop_signal: S) -> anyhow::Result<()>
where
    S: FnOnce() -> std::io::Result<F>,
    F: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let drained = runtime.block_on(async {
        let stop = stop_signal()?;
        let sink = firehose_edge::app::build_sink(&config).await?;
        anyhow::Ok(firehose_edge::app::drain(config, sink, stop).await?)
    })?;
    eprintln!(
        "drained: {} events left the queue, {} remain, {} dead letters kept",
        drained.delivered, drained.remaining, drained.dead_letters
    );
    anyhow::ensure!(
        drained.remaining == 0,
        "stopped with {} events still queued",
        drained.remaining
    );
    Ok(())
}
