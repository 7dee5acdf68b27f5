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
    use http_body_util::Empty;
    let mut addr = config.admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let check = async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| anyhow::anyhow!("{addr}/healthz: {e}"))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            let connection = tokio::spawn(connection);
            let request = http::Request::get("/healthz")
                .header(http::header::HOST, addr.to_string())
                .body(Empty::<bytes::Bytes>::new())?;
            let status = sender.send_request(request).await?.status();
            connection.abort();
            anyhow::ensure!(
                status == http::StatusCode::OK,
                "{addr}/healthz answered {status}"
            );
            Ok(())
        };
        tokio::time::timeout(std::time::Duration::from_secs(3), check)
            .await
            .map_err(|_| anyhow::anyhow!("{addr}/healthz did not answer within 3 s"))?
    })
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
