//! Delivery to Firehose: against the in-process fake (failures moto cannot produce) and
//! against moto's real Firehose API, which lands records in its S3.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::fake_firehose::{Behavior, FakeFirehose};
use common::moto::Moto;
use common::{TestServer, WAIT, event_names, fake_lines, post, test_config, track_body};
use firehose_edge::config::Config;
use firehose_edge::queue::Queue;

const TRACK: &str = "log_user_events";

fn fast(config: &mut Config) {
    config.flusher.linger_ms = 50;
    config.sink.request_timeout_ms = 500;
    config.sink.connect_timeout_ms = 500;
}

#[tokio::test]
async fn only_failed_records_are_sent_again() {
    let fake = FakeFirehose::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    fast(&mut config);
    config.flusher.packing = false;
    config.flusher.linger_ms = 500; // one batch of all ten
    fake.push(Behavior::FailPositions(
        vec![1, 4],
        "ServiceUnavailableException".to_owned(),
    ));
    let server = TestServer::start_firehose(config, &fake.endpoint_url()).await;
    let body = r#"{"userId":"u","events":[{"eventName":"e0"},{"eventName":"e1"},{"eventName":"e2"},{"eventName":"e3"},{"eventName":"e4"},{"eventName":"e5"},{"eventName":"e6"},{"eventName":"e7"},{"eventName":"e8"},{"eventName":"e9"}]}"#;
    assert_eq!(post(&server, "/track", body).await, 200);
    server.sink.wait_for_events(10).await;
    let calls = fake.calls();
    assert_eq!(calls[0].records.len(), 10);
    let resent: Vec<Vec<u8>> = calls[1..].iter().flat_map(|c| c.records.clone()).collect();
    assert_eq!(
        resent,
        vec![calls[0].records[1].clone(), calls[0].records[4].clone()],
        "exactly the failed records, once"
    );
    let mut names = event_names(&fake_lines(&fake, Some(TRACK)));
    names.sort();
    assert_eq!(names, (0..10).map(|i| format!("e{i}")).collect::<Vec<_>>());
    assert!(fake.limit_violations().is_empty());
}

#[tokio::test]
async fn every_retriable_failure_is_retried_until_delivered() {
    let fake = FakeFirehose::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    fast(&mut config);
    for b in [
        Behavior::ServiceUnavailable400,
        Behavior::ServiceUnavailable500,
        Behavior::Html500,
        Behavior::Throttling,
        Behavior::Delay(Duration::from_secs(2)), // past the 500 ms attempt timeout
        Behavior::FailPositions(vec![0], "InternalFailure".to_owned()),
    ] {
        fake.push(b);
    }
    let server = TestServer::start_firehose(config, &fake.endpoint_url()).await;
    assert_eq!(post(&server, "/track", &track_body("only")).await, 200);
    server.sink.wait_for_events(1).await;
    // Six failures, then success: seven calls arrived (the delayed one is recorded only when
    // the fake answers it, after the client gave up, so count arrivals).
    tokio::time::timeout(WAIT, fake.wait_for_received(7))
        .await
        .expect("seven calls");
    // The timed-out call was answered late, so the fake may count it too: at-least-once.
    assert!(
        event_names(&fake_lines(&fake, Some(TRACK)))
            .iter()
            .all(|n| n == "only")
    );
    assert_eq!(server.sink.lines(TRACK).len(), 1);
}

#[tokio::test]
async fn an_outage_loses_nothing_and_the_backlog_drains_when_it_ends() {
    let fake = FakeFirehose::start().await;
    fake.set_down(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    fast(&mut config);
    let server = TestServer::start_firehose(config, &fake.endpoint_url()).await;
    for i in 0..200 {
        assert_eq!(
            post(&server, "/track", &track_body(&format!("e{i}"))).await,
            200
        );
    }
    assert_eq!(server.sink.accepted(), 0);
    fake.set_down(false).await;
    server.sink.wait_for_events(200).await;
    let names: HashSet<String> = event_names(&fake_lines(&fake, Some(TRACK)))
        .into_iter()
        .collect();
    assert_eq!(names.len(), 200);
    assert!(fake.limit_violations().is_empty());
}

#[tokio::test]
async fn a_poison_record_goes_to_the_dead_letter_tree_and_the_rest_is_delivered() {
    let fake = FakeFirehose::start().await;
    fake.set_poison(Some(b"POISON".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    fast(&mut config);
    config.flusher.packing = false;
    config.flusher.linger_ms = 300;
    let server = TestServer::start_firehose(config.clone(), &fake.endpoint_url()).await;
    for i in 0..20 {
        let name = if i == 7 {
            "POISON".to_owned()
        } else {
            format!("e{i}")
        };
        assert_eq!(post(&server, "/track", &track_body(&name)).await, 200);
    }
    server.sink.wait_for_events(19).await;
    server.stop().await;
    let delivered = event_names(&fake_lines(&fake, Some(TRACK)));
    assert_eq!(delivered.len(), 19);
    assert!(!delivered.contains(&"POISON".to_owned()));
    let queue = Queue::open(&config.queue, &config.stream_names()).unwrap();
    let dead: Vec<String> = queue
        .dead_letters(TRACK)
        .unwrap()
        .iter()
        .flat_map(|e| {
            e.iter_lines()
                .map(|l| String::from_utf8(l.to_vec()).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(event_names(&dead), vec!["POISON".to_owned()]);
    assert_eq!(queue.queued_events(TRACK), 0);
}

#[tokio::test]
async fn batches_and_packed_records_stay_within_firehose_limits() {
    let fake = FakeFirehose::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    fast(&mut config);
    config.server.max_body_bytes = 4 << 20;
    config.flusher.linger_ms = 1000;
    config.flusher.per_stream.insert(
        "link_users".to_owned(),
        firehose_edge::config::StreamOverrides {
            packing: Some(false),
            ..Default::default()
        },
    );
    let server = TestServer::start_firehose(config, &fake.endpoint_url()).await;
    // Large events: packed records must respect 1,000 KiB and calls 4 MiB.
    let big = "x".repeat(300_000);
    for i in 0..16 {
        let body = format!(
            r#"{{"userId":"u","events":[{{"eventName":"big{i}","metadata":{{"pad":"{big}"}}}}]}}"#
        );
        assert_eq!(post(&server, "/track", &body).await, 200);
    }
    // Many small events: packed records hold at most 500 lines.
    let events: Vec<String> = (0..1200)
        .map(|i| format!(r#"{{"eventName":"s{i}"}}"#))
        .collect();
    assert_eq!(
        post(
            &server,
            "/track",
            &format!(r#"{{"userId":"u","events":[{}]}}"#, events.join(","))
        )
        .await,
        200
    );
    // An unpacked stream: one event per record, at most 500 records per call.
    for i in 0..700 {
        let body = format!(r#"{{"newUserId":"n{i}","originalUserId":"o"}}"#);
        assert_eq!(post(&server, "/alias", &body).await, 200);
    }
    server.sink.wait_for_events(16 + 1200 + 700).await;
    assert!(
        fake.limit_violations().is_empty(),
        "{:?}",
        fake.limit_violations()
    );
    for call in fake.calls() {
        for record in &call.records {
            let lines = record.iter().filter(|&&b| b == b'\n').count();
            assert!(lines <= 500, "{lines} lines in one record");
            if call.stream == "link_users" {
                assert_eq!(lines, 1, "packing is off for link_users");
            }
        }
    }
    let track_calls = fake
        .calls()
        .into_iter()
        .filter(|c| c.stream == TRACK)
        .count();
    assert!(track_calls >= 2, "4.8 MB of events cannot fit one call");
}

#[tokio::test]
async fn a_missing_stream_keeps_the_data_until_it_exists() {
    let fake = FakeFirehose::start().await;
    fake.push(Behavior::ResourceNotFound);
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    fast(&mut config);
    config.flusher.retry_max_ms = 100; // the configuration-error wait, short for the test
    let server = TestServer::start_firehose(config, &fake.endpoint_url()).await;
    assert_eq!(post(&server, "/track", &track_body("kept")).await, 200);
    server.sink.wait_for_events(1).await;
    assert_eq!(fake.call_count(), 2);
    assert_eq!(
        event_names(&fake_lines(&fake, Some(TRACK))),
        vec!["kept".to_owned()]
    );
}

#[tokio::test]
async fn moto_lands_every_acknowledged_event_in_s3_exactly_as_encoded() {
    let moto = Moto::start().await;
    moto.reset().await;
    let bucket = "firehose-edge-lake";
    moto.create_bucket(bucket).await;
    let streams = ["log_user_events", "link_users", "user_profiles"];
    for s in streams {
        moto.create_delivery_stream(s, bucket).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.flusher.per_stream.insert(
        "user_profiles".to_owned(),
        firehose_edge::config::StreamOverrides {
            packing: Some(false),
            ..Default::default()
        },
    );
    let server = TestServer::start_firehose(config, &moto.endpoint_url()).await;
    let mut sent = 0;
    for i in 0..30 {
        let body = format!(
            r#"{{"userId":"u{i}","events":[{{"eventName":"a{i}","metadata":{{"i":{i}}}}},{{"eventName":"b{i}","timestampUTC":{i}}}]}}"#
        );
        assert_eq!(post(&server, "/track", &body).await, 200);
        assert_eq!(
            post(
                &server,
                "/alias",
                &format!(r#"{{"newUserId":"n{i}","originalUserId":"o{i}"}}"#)
            )
            .await,
            200
        );
        assert_eq!(
            post(
                &server,
                "/profile",
                &format!(r#"{{"userId":"u{i}","attributes":{{"plan":"p{i}"}}}}"#)
            )
            .await,
            200
        );
        sent += 4;
    }
    server.sink.wait_for_events(sent).await;
    let keys = moto.list_objects(bucket).await;
    for stream in streams {
        let mut in_s3 = Vec::new();
        for key in keys.iter().filter(|k| k.starts_with(&format!("{stream}/"))) {
            let object = moto.get_object(bucket, key).await;
            assert!(object.ends_with(b"\n"), "{key} is newline-framed");
            in_s3.extend(
                String::from_utf8(object)
                    .unwrap()
                    .lines()
                    .map(str::to_owned),
            );
        }
        let mut shipped = server.sink.lines(stream);
        assert_eq!(
            shipped.len(),
            if stream == "log_user_events" { 60 } else { 30 }
        );
        in_s3.sort();
        shipped.sort();
        assert_eq!(
            in_s3, shipped,
            "{stream}: S3 holds exactly the encoded lines"
        );
    }
    server.stop().await;
}
