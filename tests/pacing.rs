//! Pacing and fan-out end to end: the service's Firehose sink against the fake Firehose
//! metering each delivery stream as AWS meters a Direct PUT stream (requests, records and bytes
//! per second; over it, `ServiceUnavailableException` per call or per record).
//! These check behaviour; the throughput figures are `cargo run --release --example scale`.

mod common;

use common::fake_firehose::{FakeFirehose, Quota};
use common::{TestServer, WAIT, post, test_config};
use firehose_edge::config::{Config, StreamList};

/// A small quota, so a test moves a few seconds' worth quickly.
const QUOTA: Quota = Quota {
    bytes_per_sec: 100 * 1024,
    requests_per_sec: 1_000,
    records_per_sec: 100_000,
};

fn paced_config(dir: &std::path::Path, track: StreamList) -> Config {
    let mut config = test_config(dir);
    config.flusher.linger_ms = 20;
    config.flusher.quota_bytes_per_sec = Some(QUOTA.bytes_per_sec);
    config.flusher.quota_requests_per_sec = Some(QUOTA.requests_per_sec);
    config.flusher.quota_records_per_sec = Some(QUOTA.records_per_sec);
    config.streams.track = track;
    config
}

/// Posts `requests` bodies of 100 events each (~18 KB) and returns the events acknowledged.
async fn load(server: &TestServer, requests: usize) -> usize {
    for r in 0..requests {
        let events: Vec<String> = (0..100)
            .map(|e| {
                format!(
                    r#"{{"eventName":"e-{r}-{e}","metadata":{{"pad":"{}"}}}}"#,
                    "x".repeat(60)
                )
            })
            .collect();
        let body = format!(r#"{{"userId":"u{r}","events":[{}]}}"#, events.join(","));
        assert_eq!(post(server, "/track", &body).await, 200);
    }
    requests * 100
}

/// Waits until the fake holds `n` accepted records' worth of events over `streams`.
async fn wait_delivered(fake: &FakeFirehose, streams: &[&str], events: usize) {
    tokio::time::timeout(WAIT * 2, async {
        loop {
            let seen = fake.accepted_count();
            let lines: usize = common::fake_lines(fake, None).len();
            if lines >= events {
                return;
            }
            fake.wait_for_accepted_records(seen + 1).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let stats: Vec<_> = streams.iter().map(|s| (s, fake.stream_stats(s))).collect();
        panic!("not every event was delivered: {stats:?}")
    });
}

/// Paced to the quota the fake enforces, a backlog of ~5 seconds' worth goes out without a
/// single throttle, and no faster than the quota lets it.
#[tokio::test]
async fn a_paced_stream_keeps_to_its_quota_and_is_never_throttled() {
    let fake = FakeFirehose::start().await;
    fake.set_quota("log_user_events", QUOTA);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_firehose(
        paced_config(dir.path(), "log_user_events".into()),
        &fake.endpoint_url(),
    )
    .await;
    let started = std::time::Instant::now();
    let events = load(&server, 30).await;
    wait_delivered(&fake, &["log_user_events"], events).await;
    let took = started.elapsed();
    let stats = fake.stream_stats("log_user_events");
    assert_eq!(
        (stats.throttled_calls, stats.throttled_records),
        (0, 0),
        "{stats:?}"
    );
    // At most the quota plus the one slice the pacer starts with: never faster.
    let floor = (stats.accepted_bytes as f64 / QUOTA.bytes_per_sec as f64) - 0.1;
    assert!(
        took.as_secs_f64() >= floor,
        "{} bytes in {took:?}: faster than {} bytes/s",
        stats.accepted_bytes,
        QUOTA.bytes_per_sec
    );
    assert!(fake.limit_violations().is_empty());
}

/// Several delivery streams behind one endpoint: every one is used, each at its own pace, and
/// every event lands once.
#[tokio::test]
async fn fan_out_uses_every_stream() {
    let fake = FakeFirehose::start().await;
    let streams = ["ev-0", "ev-1", "ev-2"];
    for s in streams {
        fake.set_quota(s, QUOTA);
    }
    let dir = tempfile::tempdir().unwrap();
    let list: Vec<String> = streams.iter().map(|s| (*s).to_owned()).collect();
    let track = StreamList::try_from(list).unwrap();
    let server =
        TestServer::start_firehose(paced_config(dir.path(), track), &fake.endpoint_url()).await;
    let started = std::time::Instant::now();
    let events = load(&server, 45).await;
    wait_delivered(&fake, &streams, events).await;
    let took = started.elapsed();
    let lines = common::fake_lines(&fake, None);
    let mut names = common::event_names(&lines);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), events, "every event once");
    let mut total = 0;
    for s in streams {
        let stats = fake.stream_stats(s);
        assert!(stats.accepted_bytes > 0, "{s} unused: {stats:?}");
        assert_eq!(
            stats.throttled_calls + stats.throttled_records,
            0,
            "{s}: {stats:?}"
        );
        total += stats.accepted_bytes;
    }
    // Three quotas' worth: faster than one stream could have taken it.
    let one_stream = total as f64 / QUOTA.bytes_per_sec as f64;
    assert!(
        took.as_secs_f64() < one_stream * 0.75,
        "{total} bytes took {took:?}; one stream alone needs {one_stream:.1} s"
    );
}

/// One stream of a fan-out really takes far less than the service believes (its quota was
/// never raised, say): it is throttled, its pacing share shrinks, and the other streams carry
/// the load, so the endpoint does not stall.
#[tokio::test]
async fn a_throttled_stream_does_not_stall_the_others() {
    let fake = FakeFirehose::start().await;
    fake.set_quota(
        "slow",
        Quota {
            bytes_per_sec: 8 * 1024,
            ..QUOTA
        },
    );
    fake.set_quota("fast", QUOTA);
    let dir = tempfile::tempdir().unwrap();
    let track = StreamList::try_from(vec!["slow".to_owned(), "fast".to_owned()]).unwrap();
    // The process-wide recorder, as `main` installs it (the only test here that reads it).
    let handle = firehose_edge::metrics::exporter()
        .install_recorder()
        .expect("one recorder for this test binary");
    let server = TestServer::start_firehose_observed(
        paced_config(dir.path(), track),
        &fake.endpoint_url(),
        Some(handle),
    )
    .await;
    let events = load(&server, 20).await;
    wait_delivered(&fake, &["slow", "fast"], events).await;
    let (slow, fast) = (fake.stream_stats("slow"), fake.stream_stats("fast"));
    assert!(
        slow.throttled_calls + slow.throttled_records > 0,
        "the slow stream was never throttled: {slow:?}"
    );
    assert!(
        fast.accepted_bytes > slow.accepted_bytes * 3,
        "the healthy stream carried the load: slow {slow:?}, fast {fast:?}"
    );
    let (status, metrics) = server.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let share = metrics
        .lines()
        .find(|l| l.starts_with("firehose_edge_pacing_quota_share{stream=\"slow\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no pacing share for slow in:\n{metrics}"));
    assert!(
        share < 0.9,
        "the throttled stream's share did not shrink: {share}"
    );
}
