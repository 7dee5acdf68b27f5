//! The container image, as operators run it: built from the project's own, unmodified
//! Dockerfile and run on the Docker engine `scripts/ensure-docker.sh` starts, with host
//! networking and loopback-only listeners. It serves and delivers, turns healthy, runs as its
//! non-root user, drains on `docker stop` and exits 0, keeps its queue on the volume for the
//! next container, and a change in `src/` leaves the dependency layer cached.

mod common;

use std::path::Path;
use std::time::Duration;

use common::docker::{self, Container, Volume};
use common::{WAIT, track_body};
use serde_json::Value;

/// The tag of the layer-cache probe's build, which is never completed.
const PROBE: &str = "firehose-edge:cache-probe";

/// Where the Dockerfile mounts the volume (the queue lives under it).
const VOLUME_DIR: &str = "/var/lib/firehose-edge";

/// The lake of the file sink, on the volume.
const LAKE: &str = "/var/lib/firehose-edge/lake";

/// A first health check runs `--interval` (10 s) after the start; three of them may fail
/// in the start period before it is `unhealthy`.
const HEALTHY_WITHIN: Duration = Duration::from_secs(90);

/// The image, running with host networking: ingest and admin on loopback ports, the file
/// sink writing to `lake`, the queue (as the Dockerfile sets it) on `volume`.
struct Service {
    container: Container,
    ingest: String,
    admin: String,
}

impl Service {
    async fn start(volume: &Volume, lake: &str, extra_env: &[(&str, &str)]) -> Service {
        docker::image().await;
        let (ingest, admin) = (common::free_port(), common::free_port());
        let mut env = vec![
            (
                "FIREHOSE_EDGE__SERVER__LISTEN",
                format!("127.0.0.1:{ingest}"),
            ),
            ("FIREHOSE_EDGE__ADMIN__LISTEN", format!("127.0.0.1:{admin}")),
            ("FIREHOSE_EDGE__SINK__KIND", "file".to_owned()),
            ("FIREHOSE_EDGE__SINK__DIRECTORY", lake.to_owned()),
            ("FIREHOSE_EDGE__FLUSHER__LINGER_MS", "10".to_owned()),
            ("FIREHOSE_EDGE__FLUSHER__RETRY_MAX_MS", "200".to_owned()),
            // The default 1 GiB floor of free disk would fail the test on a nearly full CI
            // disk; the floor itself is tested in tests/storage.rs.
            (
                "FIREHOSE_EDGE__QUEUE__MIN_FREE_BYTES",
                (16 << 20).to_string(),
            ),
        ];
        env.extend(extra_env.iter().map(|(k, v)| (*k, v.to_string())));
        let mut args = vec![
            "--network".to_owned(),
            "host".to_owned(),
            "--volume".to_owned(),
            format!("{}:{VOLUME_DIR}", volume.name),
        ];
        for (k, v) in env {
            args.extend(["--env".to_owned(), format!("{k}={v}")]);
        }
        args.push(docker::IMAGE.to_owned());
        let service = Service {
            container: Container::run("service", &args).await,
            ingest: format!("127.0.0.1:{ingest}"),
            admin: format!("127.0.0.1:{admin}"),
        };
        service.wait_ready().await;
        service
    }

    /// Waits until `/readyz` answers 200; fails at once, with the logs, if the container
    /// stops.
    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let url = format!("http://{}/readyz", self.admin);
        let ready = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(r) = client.get(&url).send().await
                    && r.status() == 200
                {
                    return;
                }
                let state = self.container.inspect("{{.State.Status}}").await;
                assert_eq!(state, "running", "{}", self.container.logs().await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            ready.is_ok(),
            "not ready within {WAIT:?}: {}",
            self.container.logs().await
        );
    }

    /// POSTs a one-event `/track` and returns its status and body.
    async fn track(&self, name: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .post(format!("http://{}/track", self.ingest))
            .header("content-type", "application/json")
            .body(track_body(name))
            .timeout(WAIT)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The `eventName`s in the lake of `log_user_events`, read inside the container.
    async fn lake_events(&self) -> Vec<String> {
        let glob = format!("{LAKE}/log_user_events/*/*/*/*/*.ndjson");
        let out = self
            .container
            .exec(&["sh", "-c", &format!("cat {glob} 2>/dev/null || true")])
            .await;
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let record: Value = serde_json::from_str(l).unwrap();
                record["eventName"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// Waits until `name` is in the lake.
    async fn wait_in_lake(&self, name: &str) {
        let found = tokio::time::timeout(WAIT, async {
            // The lake is written inside the container: there is nothing to await but its files.
            while !self.lake_events().await.iter().any(|n| n == name) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "{name} not in the lake: {}",
            self.container.logs().await
        );
    }

    /// Waits for a log line whose message contains `text`; returns its fields.
    async fn wait_logged(&self, text: &str) -> Value {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(fields) = logged(&self.container.logs().await, text) {
                    return fields;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {text:?} logged within {WAIT:?}"))
    }

    /// `docker stop` (the service's grace period is within the 40 s given), then the exit
    /// code and the fields of the service's last "stopped" line.
    async fn stop(&self) -> (i64, Value) {
        let code = self.container.stop(40).await;
        let logs = self.container.logs().await;
        let stopped = logged(&logs, "stopped").unwrap_or_else(|| panic!("no \"stopped\": {logs}"));
        (code, stopped)
    }
}

/// The fields of the last JSON log line (the image logs JSON) whose message contains `text`.
fn logged(logs: &str, text: &str) -> Option<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(text))
        })
        .map(|l| l["fields"].clone())
        .next_back()
}

/// The whole life of one container: a `/track` answered 200 and found in the lake on the
/// volume, the HEALTHCHECK turning `healthy`, the service as PID 1 under the image's non-root
/// user, and `docker stop` draining it to an exit 0 with nothing left queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_turns_healthy_runs_as_its_user_and_drains_on_stop() {
    let built = docker::image().await;
    // The figures the README's Docker section quotes (`-- --nocapture` shows them).
    eprintln!(
        "{}: {:.0} MB, built in {:.1} s",
        docker::IMAGE,
        built.size as f64 / 1e6,
        built.took.as_secs_f64()
    );
    let volume = Volume::create("queue").await;
    let service = Service::start(&volume, LAKE, &[]).await;

    let (status, body) = service.track("in-a-container").await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok", "accepted": 1}));
    service.wait_in_lake("in-a-container").await;

    let container = &service.container;
    let uid = container.exec(&["id", "-u", "firehose-edge"]).await;
    let uid = String::from_utf8(uid.stdout).unwrap().trim().to_owned();
    assert!(
        !uid.is_empty() && uid != "0",
        "the image's user has uid {uid:?}"
    );
    // PID 1 is the service itself (exec-form ENTRYPOINT), so its status is the service's.
    let status = container.exec(&["cat", "/proc/1/status"]).await;
    let status = String::from_utf8(status.stdout).unwrap();
    let ids = |key: &str| -> Vec<String> {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().skip(1).map(str::to_owned).collect()
    };
    assert!(status.contains("Name:\tfirehose-edge"), "{status}");
    assert_eq!(ids("Uid:"), vec![uid.clone(); 4], "{status}");
    assert!(!ids("Gid:").contains(&"0".to_owned()), "{status}");

    let health = tokio::time::timeout(HEALTHY_WITHIN, async {
        loop {
            let health = container.inspect("{{.State.Health.Status}}").await;
            if health == "healthy" {
                return;
            }
            assert_ne!(health, "unhealthy", "{}", container.logs().await);
            // The engine runs the check on its own schedule: poll the state it reports.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(health.is_ok(), "not healthy within {HEALTHY_WITHIN:?}");

    let (code, stopped) = service.stop().await;
    assert_eq!(code, 0, "{}", container.logs().await);
    assert_eq!(stopped["queued_events"], 0, "{stopped}");
    assert!(container.logs().await.contains("SIGTERM"));
}

/// The queue is on the volume, not in the container: what one container accepted while its
/// sink could not deliver is delivered by the next container started on the same volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_container_on_the_volume_delivers_what_the_last_one_queued() {
    docker::image().await;
    let volume = Volume::create("queue").await;
    // The image's user may not create a directory under `/`: every delivery fails (retried).
    let first = Service::start(
        &volume,
        "/lake-it-cannot-write",
        &[("FIREHOSE_EDGE__SHUTDOWN__GRACE_PERIOD", "3")],
    )
    .await;
    let (status, body) = first.track("across-containers").await;
    assert_eq!(status, 200, "{body}");
    first.wait_logged("sink call failed; will retry").await;
    let (code, stopped) = first.stop().await;
    assert_eq!(code, 0, "{}", first.container.logs().await);
    assert_eq!(stopped["queued_events"], 1, "{stopped}");
    drop(first);

    let second = Service::start(&volume, LAKE, &[]).await;
    second.wait_in_lake("across-containers").await;
    let (code, stopped) = second.stop().await;
    assert_eq!(code, 0, "{}", second.container.logs().await);
    assert_eq!(stopped["queued_events"], 0, "{stopped}");
}

/// The Dockerfile's layer order does what it says: after a change in `src/`, every step up to
/// and including the dependency build is taken from the cache, and `COPY src` is not. The
/// build is cancelled there (the crate's own compile is what a real rebuild would add; see
/// the README for its time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_src_reuses_the_cached_dependency_layer() {
    docker::image().await; // the cache the second build should use
    let context = tempfile::tempdir().unwrap();
    copy_context(&docker::repo(), context.path());
    let main = context.path().join("src/main.rs");
    let mut text = std::fs::read_to_string(&main).unwrap();
    // Unique, so no earlier run of this test left a cached `COPY src` layer for it.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    text.push_str(&format!("// layer-cache probe {nanos}\n"));
    std::fs::write(&main, text).unwrap();

    // (instruction, taken from the cache) of each step, as the classic builder prints them,
    // and the last layer made.
    let mut steps: Vec<(String, bool)> = Vec::new();
    let mut last_layer = None;
    let transcript = docker::build(context.path(), PROBE, |line| {
        if let Some(step) = line.strip_prefix("Step ") {
            let instruction = step.split_once(" : ").map_or(step, |(_, i)| i).to_owned();
            let after_src = steps.iter().any(|(i, _)| i.starts_with("COPY src"));
            // The crate's own compile is next: what is to be seen has been.
            let enough = after_src && instruction.starts_with("RUN");
            steps.push((instruction, false));
            return enough;
        }
        match line.trim().strip_prefix("---> ") {
            Some("Using cache") => steps.last_mut().unwrap().1 = true,
            Some(id) if !id.starts_with("Running in") => last_layer = Some(id.to_owned()),
            _ => {}
        }
        false
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The probe's layers (from `COPY src` on) are used by nothing: remove them. The engine
    // may still be removing the cancelled step's container, which holds the last one.
    let probe = last_layer.unwrap_or_else(|| PROBE.to_owned());
    let removed = tokio::time::timeout(WAIT, async {
        while !docker::output(&["rmi", &probe]).await.status.success() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(removed.is_ok(), "the probe's layer {probe} was not removed");

    let at_src = steps
        .iter()
        .position(|(i, _)| i.starts_with("COPY src"))
        .unwrap_or_else(|| panic!("no COPY src step:\n{transcript}"));
    let (before, from_src) = steps.split_at(at_src);
    assert!(
        before
            .iter()
            .any(|(i, _)| i.starts_with("RUN") && i.contains("cargo build")),
        "the dependencies are not built before COPY src:\n{transcript}"
    );
    // FROM names the base image, which is not built and so never "Using cache".
    for (instruction, cached) in before.iter().filter(|(i, _)| !i.starts_with("FROM")) {
        assert!(
            cached,
            "rebuilt after a change in src/: {instruction}\n{transcript}"
        );
    }
    assert!(
        !from_src[0].1,
        "COPY src came from the cache:\n{transcript}"
    );
}

/// Copies the repository for a build context, without what `.dockerignore` keeps out anyway.
fn copy_context(from: &Path, to: &Path) {
    copy_tree(from, to, true);
}

fn copy_tree(from: &Path, to: &Path, top: bool) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let ignored_here = top && [".git", ".venv", "data"].iter().any(|n| name == *n);
        if ignored_here || name == "target" || name == "node_modules" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir(&target).unwrap();
            copy_tree(&entry.path(), &target, false);
        } else if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
