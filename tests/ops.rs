//! Operating the service: metrics that move as they should, health and readiness, and
//! recovery from a queue that will not open.

mod common;

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use common::fake_firehose::{Behavior, FakeFirehose};
use common::{Observed, TestServer, WAIT, post, test_config, track_body};
use firehose_edge::sink::FileSink as LakeSink;
use firehose_edge::sink::{FileSink, RecordOutcome, Sink, SinkError};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{Notify, Semaphore};

/// One recorder for this test binary, as `main` installs one for the process.
fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            firehose_edge::metrics::exporter()
                .install_recorder()
                .expect("one recorder per process")
        })
        .clone()
}

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().unwrap())
        })
}

async fn metrics(server: &TestServer) -> String {
    let (status, body) = server.admin_get("/metrics").await;
    assert_eq!(status, 200);
    body
}

/// The classic API's metric assertions live in this one test: the recorder is process-wide,
/// so tests running in parallel would otherwise share counters. Stream names are its own
/// (and the `/v1` test below has its own streams and endpoint labels).
#[tokio::test]
async fn every_pinned_metric_appears_and_moves() {
    let fake = FakeFirehose::start().await;
    fake.set_down(true).await;
    fake.set_poison(Some(b"POISON".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.streams.track = "m_track".into();
    config.streams.alias = "m_alias".into();
    config.streams.profile = "m_profile".into();
    config.flusher.packing = false;
    config.flusher.linger_ms = 100;
    config.sink.connect_timeout_ms = 300;
    let server =
        TestServer::start_firehose_observed(config, &fake.endpoint_url(), Some(recorder())).await;

    // Counters exist at 0 from the start, so `increase(...)` alerts fire on the first event.
    let text = metrics(&server).await;
    // (Other tests of this binary share the recorder and may have moved this one.)
    assert!(sample(&text, "firehose_edge_queue_moved_aside_total", &[]).is_some());
    for (name, labels) in [
        (
            "firehose_edge_queue_lost_events_total",
            &[("stream", "m_track")][..],
        ),
        (
            "firehose_edge_requests_rejected_total",
            &[("endpoint", "profile"), ("reason", "queue_full")][..],
        ),
        ("firehose_edge_queue_storage_failed", &[][..]),
        ("firehose_edge_queue_low_disk", &[][..]),
    ] {
        assert_eq!(sample(&text, name, labels), Some(0.0), "{name} {labels:?}");
    }

    for i in 0..5 {
        assert_eq!(
            post(&server, "/track", &track_body(&format!("e{i}"))).await,
            200
        );
    }
    assert_eq!(
        post(
            &server,
            "/alias",
            r#"{"newUserId":"n","originalUserId":"o"}"#
        )
        .await,
        200
    );
    assert_eq!(post(&server, "/track", "not json").await, 400);
    assert_eq!(post(&server, "/profile", "{}").await, 400);

    // Firehose is down: depth and oldest age rise.
    let m = metrics(&server).await;
    assert_eq!(
        sample(
            &m,
            "firehose_edge_requests_total",
            &[("endpoint", "track"), ("status", "200")]
        )
        .map(|v| v >= 5.0),
        Some(true)
    );
    assert_eq!(
        sample(
            &m,
            "firehose_edge_requests_total",
            &[("endpoint", "profile"), ("status", "400")]
        )
        .map(|v| v >= 1.0),
        Some(true)
    );
    assert!(
        sample(
            &m,
            "firehose_edge_request_duration_seconds_count",
            &[("endpoint", "track")]
        )
        .unwrap()
            >= 5.0
    );
    // A histogram (aggregatable across replicas), not a summary: buckets, no quantiles.
    assert!(
        sample(
            &m,
            "firehose_edge_request_duration_seconds_bucket",
            &[("endpoint", "track"), ("le", "+Inf")]
        )
        .unwrap()
            >= 5.0
    );
    assert!(m.contains("# TYPE firehose_edge_request_duration_seconds histogram"));
    assert!(!m.contains("quantile="), "no summaries");
    assert_eq!(
        sample(
            &m,
            "firehose_edge_events_accepted_total",
            &[("stream", "m_track")]
        ),
        Some(5.0)
    );
    assert!(
        sample(
            &m,
            "firehose_edge_requests_rejected_total",
            &[("endpoint", "track"), ("reason", "invalid")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(
            &m,
            "firehose_edge_queue_depth_events",
            &[("stream", "m_track")]
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &m,
            "firehose_edge_queue_depth_events",
            &[("stream", "m_alias")]
        ),
        Some(1.0)
    );
    let age = sample(
        &m,
        "firehose_edge_queue_oldest_event_age_seconds",
        &[("stream", "m_track")],
    )
    .unwrap();
    assert!(age > 0.0);
    assert!(sample(&m, "firehose_edge_queue_disk_bytes", &[]).unwrap() > 0.0);
    let later = metrics(&server).await;
    assert!(
        sample(
            &later,
            "firehose_edge_queue_oldest_event_age_seconds",
            &[("stream", "m_track")]
        )
        .unwrap()
            >= age
    );

    // The flusher keeps trying while Firehose refuses connections, and counts it: as
    // refused, or (a connect that a loaded machine did not finish within the 300 ms
    // connect timeout) as timed out.
    tokio::time::timeout(WAIT, async {
        loop {
            let m = metrics(&server).await;
            let failed = |code| {
                sample(
                    &m,
                    "firehose_edge_record_failures_total",
                    &[("stream", "m_track"), ("error_code", code)],
                )
            };
            if failed("connection").or(failed("timeout")).is_some() {
                assert_eq!(
                    sample(
                        &m,
                        "firehose_edge_queue_depth_events",
                        &[("stream", "m_track")]
                    ),
                    Some(5.0)
                );
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("connection failures counted while Firehose is down");

    // Firehose returns, failing one record by position once; then a poison record.
    fake.push(Behavior::FailPositions(
        vec![0],
        "ServiceUnavailableException".to_owned(),
    ));
    fake.set_down(false).await;
    server.sink.wait_for_events(6).await;
    assert_eq!(post(&server, "/track", &track_body("POISON")).await, 200);
    assert_eq!(post(&server, "/track", &track_body("after")).await, 200);
    server.sink.wait_for_events(7).await;
    let done = tokio::time::timeout(WAIT, async {
        loop {
            let calls = fake.call_count();
            let m = metrics(&server).await;
            if sample(
                &m,
                "firehose_edge_queue_depth_events",
                &[("stream", "m_track")],
            ) == Some(0.0)
                && sample(
                    &m,
                    "firehose_edge_dead_letter_events",
                    &[("stream", "m_track")],
                ) == Some(1.0)
            {
                return m;
            }
            // Settling follows the sink's answer, and the last call's may come after it:
            // the next call, or a look at the metrics again soon (nothing signals a settle).
            let next = fake.wait_for_calls(calls + 1);
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), next).await;
        }
    });
    let m = done
        .await
        .expect("queue drained and the poison dead-lettered");
    // Sink calls have returned by now, so their histogram exists (before them it may not).
    assert!(m.contains("# TYPE firehose_edge_put_batch_duration_seconds histogram"));
    assert!(!m.contains("quantile="), "no summaries");
    assert_eq!(
        sample(
            &m,
            "firehose_edge_queue_oldest_event_age_seconds",
            &[("stream", "m_track")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &m,
            "firehose_edge_records_delivered_total",
            &[("stream", "m_track")]
        ),
        Some(6.0)
    );
    assert_eq!(
        sample(
            &m,
            "firehose_edge_records_delivered_total",
            &[("stream", "m_alias")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "firehose_edge_billed_bytes_total",
            &[("stream", "m_track")]
        ),
        Some(6.0 * 5120.0)
    );
    // The scripted failure hits whichever stream's call came first.
    assert!(
        sample(
            &m,
            "firehose_edge_record_failures_total",
            &[("error_code", "ServiceUnavailableException")]
        )
        .unwrap()
            >= 1.0
    );
    let down = |code| {
        sample(
            &m,
            "firehose_edge_record_failures_total",
            &[("stream", "m_track"), ("error_code", code)],
        )
        .unwrap_or(0.0)
    };
    assert!(down("connection") + down("timeout") >= 1.0);
    assert!(
        sample(
            &m,
            "firehose_edge_record_failures_total",
            &[
                ("stream", "m_track"),
                ("error_code", "InvalidArgumentException")
            ]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &m,
            "firehose_edge_put_batch_duration_seconds_count",
            &[("stream", "m_track")]
        )
        .unwrap()
            >= 2.0
    );
    assert!(sample(&m, "firehose_edge_queue_flushes_total", &[]).unwrap() >= 1.0);
    server.stop().await;
}

/// `/v1` counts what it stores: a batch with a duplicate among its messages counts the
/// others (it counted none of them), per stream; and a refused request counts once in
/// `requests_rejected_total`, however many messages it carried. Nothing else in this binary
/// posts to `/v1`, and the streams are this test's own.
#[tokio::test]
async fn accepted_counts_what_is_stored_and_rejected_counts_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.segment.track = "m_v1_track".into();
    config.segment.identify = "m_v1_identify".into();
    let sink = Observed::new(Arc::new(LakeSink::new(&config.sink.directory)));
    let server = TestServer::start_observed(config, sink, Some(recorder())).await;
    let message = |kind: &str, id: &str| {
        let field = if kind == "track" {
            r#","event":"e""#
        } else {
            ""
        };
        format!(r#"{{"type":"{kind}","userId":"u","messageId":"{id}"{field}}}"#)
    };
    let batch = |messages: &[String]| format!(r#"{{"batch":[{}]}}"#, messages.join(","));
    let accepted = |m: &str, stream: &str| {
        sample(
            m,
            "firehose_edge_events_accepted_total",
            &[("stream", stream)],
        )
    };
    let first = batch(&[
        message("track", "v1-a"),
        message("track", "v1-b"),
        message("identify", "v1-c"),
    ]);
    assert_eq!(post(&server, "/v1/batch", &first).await, 200);
    let m = metrics(&server).await;
    assert_eq!(accepted(&m, "m_v1_track"), Some(2.0));
    assert_eq!(accepted(&m, "m_v1_identify"), Some(1.0));
    // A retry of one message beside a new one: the new one is stored and counted.
    let second = batch(&[message("track", "v1-a"), message("track", "v1-d")]);
    assert_eq!(post(&server, "/v1/batch", &second).await, 200);
    let m = metrics(&server).await;
    assert_eq!(accepted(&m, "m_v1_track"), Some(3.0));
    assert_eq!(accepted(&m, "m_v1_identify"), Some(1.0));
    // Only duplicates: nothing stored, nothing counted as accepted.
    assert_eq!(post(&server, "/v1/batch", &second).await, 200);
    let m = metrics(&server).await;
    assert_eq!(accepted(&m, "m_v1_track"), Some(3.0));
    server.sink.wait_for_events(4).await;

    // Three invalid messages in one request: one refused request.
    let rejected = |m: &str| {
        sample(
            m,
            "firehose_edge_requests_rejected_total",
            &[("endpoint", "v1_batch"), ("reason", "invalid")],
        )
    };
    assert_eq!(rejected(&m), Some(0.0), "exists at 0 from the start");
    let invalid = r#"{"batch":[{"type":"track"},{"type":"track"},{"type":"track"}]}"#;
    assert_eq!(post(&server, "/v1/batch", invalid).await, 400);
    let m = metrics(&server).await;
    assert_eq!(rejected(&m), Some(1.0));
    assert!(
        !m.contains("firehose_edge_events_rejected_total"),
        "the old name, which counted requests under a name that said events, is gone"
    );
    server.stop().await;
}

#[tokio::test]
async fn readyz_turns_503_at_the_budget_and_back_after_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Room for about a dozen one-event entries, so "full" sits above the 90% resume mark.
    config.queue.max_bytes = 2000;
    let gated = Gated::new(dir.path());
    let gate = gated.gate.clone();
    let server = TestServer::start_with_sink(config, Observed::new(gated)).await;
    assert_eq!(server.admin_get("/readyz").await.0, 200);
    let mut accepted = 0;
    while post(&server, "/track", &track_body(&format!("fill{accepted}"))).await == 200 {
        accepted += 1;
    }
    assert!(accepted >= 1);
    let (status, body) = server.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("budget"), "{body}");
    assert_eq!(server.admin_get("/healthz").await.0, 200);
    gate.add_permits(1000);
    server.sink.wait_for_events(accepted).await;
    let ready = tokio::time::timeout(WAIT, async {
        // The budget is released when the flusher settles, just after the sink's answer.
        while server.admin_get("/readyz").await.0 != 200 {
            tokio::task::yield_now().await;
        }
    });
    ready.await.expect("ready again after the drain");
    assert_eq!(post(&server, "/track", &track_body("again")).await, 200);
}

#[tokio::test]
async fn readyz_turns_503_during_shutdown_while_healthz_stays_200() {
    let dir = tempfile::tempdir().unwrap();
    let gated = Gated::new(dir.path());
    let (gate, entered) = (gated.gate.clone(), gated.entered.clone());
    let server = TestServer::start_with_sink(test_config(dir.path()), Observed::new(gated)).await;
    assert_eq!(post(&server, "/track", &track_body("in-flight")).await, 200);
    // Wait until the flusher's call is in flight (blocked on the gate), then stop.
    tokio::time::timeout(WAIT, entered.notified())
        .await
        .unwrap();
    server.begin_stop();
    let (status, body) = tokio::time::timeout(WAIT, async {
        loop {
            let (status, body) = server.admin_get("/readyz").await;
            if status != 200 {
                return (status, body);
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(server.admin_get("/healthz").await.0, 200);
    gate.add_permits(1);
    server.sink.wait_for_events(1).await;
    server.stop().await;
}

/// A file sink whose calls wait for a permit, so a test can hold a call in flight.
struct Gated {
    gate: Arc<Semaphore>,
    /// Signalled when a call is waiting at the gate.
    entered: Arc<Notify>,
    inner: FileSink,
}

impl Gated {
    fn new(dir: &std::path::Path) -> Arc<Gated> {
        Arc::new(Gated {
            gate: Arc::new(Semaphore::new(0)),
            entered: Arc::new(Notify::new()),
            inner: FileSink::new(dir.join("lake")),
        })
    }
}

#[async_trait]
impl Sink for Gated {
    async fn put_batch(
        &self,
        stream: &str,
        records: Vec<Bytes>,
    ) -> Result<Vec<RecordOutcome>, SinkError> {
        self.entered.notify_one();
        self.gate.acquire().await.unwrap().forget();
        self.inner.put_batch(stream, records).await
    }
}

#[tokio::test]
async fn a_queue_that_will_not_open_is_moved_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    std::fs::create_dir_all(&config.queue.path).unwrap();
    std::fs::write(
        config.queue.path.join("conf"),
        b"this is not a sled config\x00\xff",
    )
    .unwrap();
    std::fs::write(config.queue.path.join("db"), vec![0xAB; 4096]).unwrap();
    let server = TestServer::start(config).await;
    assert_eq!(post(&server, "/track", &track_body("fresh")).await, 200);
    server.sink.wait_for_events(1).await;
    server.stop().await;
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("queue.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept = std::fs::read(dir.path().join(&aside[0]).join("db")).unwrap();
    assert_eq!(
        kept,
        vec![0xAB; 4096],
        "the old directory is kept as it was"
    );
}
