//! The binary's command line: configuration checks and the dead-letter tools.

use std::collections::HashSet;
use std::process::{Command, Output};

use firehose_edge::config::Config;
use firehose_edge::queue::Queue;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firehose-edge"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[queue]\ndurability = \"sometimes\"\n", "queue.durability"),
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[server]\nlisen = \"127.0.0.1:1\"\n", "server.lisen"),
        (
            "[flusher]\nmax_batch_records = 1000\n",
            "flusher.max_batch_records",
        ),
        ("[sink]\nkind = 3\n", "sink.kind"),
        // Over Firehose's record limit: every such message would become a dead letter.
        (
            "[segment]\nmax_message_bytes = 2000000\n",
            "segment.max_message_bytes",
        ),
        ("[queue\n", "config.toml"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        for extra in [&["--check-config"][..], &[]] {
            let mut args = vec!["--config", path.to_str().unwrap()];
            args.extend_from_slice(extra);
            let out = run(&args, &[]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{text:?} {extra:?}: {stderr}");
            assert!(
                stderr.contains(key),
                "{text:?}: {stderr} does not name {key}"
            );
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        }
    }
    let env_error = run(
        &["--check-config"],
        &[("FIREHOSE_EDGE__QUEUE__MAX_BYTES", "lots")],
    );
    assert_eq!(env_error.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&env_error.stderr).contains("queue.max_bytes"));
    let ok = run(&["--check-config", "--config", "config/default.toml"], &[]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test]
async fn dead_letters_can_be_listed_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let queue_path = dir.path().join("queue");
    let mut config = Config::default();
    config.queue.path = queue_path.clone();
    let streams = config.stream_names();
    {
        let queue = Queue::open(&config.queue, &streams).unwrap();
        queue
            .append("link_users", b"{\"a\":1}\n{\"b\":2}\n", 2)
            .await
            .unwrap();
        let head = queue
            .read_head("link_users", &HashSet::new(), 1, usize::MAX)
            .unwrap();
        queue
            .dead_letter("link_users", &head[0], &[b"{\"b\":2}\n"], &[])
            .unwrap();
        queue.close().unwrap();
    }
    let env = [("FIREHOSE_EDGE__QUEUE__PATH", queue_path.to_str().unwrap())];
    let list = run(&["dead-letters", "list"], &env);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&list.stdout), "{\"b\":2}\n");
    assert!(String::from_utf8_lossy(&list.stderr).contains("link_users: 1 dead-lettered records"));

    let replay = run(&["dead-letters", "replay", "--stream", "link_users"], &env);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(String::from_utf8_lossy(&replay.stderr).contains("1 records moved back"));
    assert_eq!(run(&["dead-letters", "list"], &env).stdout, b"");

    let queue = Queue::open(&config.queue, &streams).unwrap();
    assert_eq!(queue.queued_events("link_users"), 1);
    assert_eq!(queue.dead_letter_events("link_users"), 0);
    let unknown = run(&["dead-letters", "list", "--stream", "nope"], &env);
    assert!(!unknown.status.success());
}

/// `std::env::vars()` panics on any value that is not UTF-8: an unrelated variable must not
/// stop the service, one of ours must be refused like any bad configuration.
#[test]
fn non_utf8_environment_values_are_ignored_unless_they_are_ours() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let bad = OsStr::from_bytes(b"caf\xe9");
    let out = Command::new(env!("CARGO_BIN_EXE_firehose-edge"))
        .arg("--check-config")
        .env_clear()
        .env("SOME_UNRELATED_VARIABLE", bad)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_firehose-edge"))
        .arg("--check-config")
        .env_clear()
        .env("FIREHOSE_EDGE__QUEUE__PATH", bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("FIREHOSE_EDGE__QUEUE__PATH"), "{stderr}");
}

/// `queue verify` on a stopped queue, and refused on a queue another process holds.
#[test]
fn queue_verify_checks_a_stopped_queue_and_refuses_a_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue");
    let env = [("FIREHOSE_EDGE__QUEUE__PATH", path.to_str().unwrap())];
    let mut config = Config::default();
    config.queue.path = path.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let queue = Queue::open(&config.queue, &config.stream_names()).unwrap();
    rt.block_on(queue.append("log_user_events", b"{}\n", 1))
        .unwrap();
    let out = run(&["queue", "verify"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "a running queue is refused");
    assert!(stderr.contains("in use"), "{stderr}");
    queue.close().unwrap();
    drop(queue);
    let out = run(&["queue", "verify"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("log_user_events: queued=1 dead_letters=0 expected=1 missing=0"),
        "{stdout}"
    );
}

/// The image's HEALTHCHECK runs `healthcheck --config FILE` (the flag after the sub-command):
/// that parses, reads the file's admin address, and fails (exit 1, not a usage error) when
/// nothing answers there.
#[test]
fn healthcheck_takes_the_config_after_the_sub_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    // A port nothing listens on: bind one, note it, let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(&path, format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    let out = run(&["healthcheck", "--config", path.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

/// An invalid or missing tracking plan, a hash without a key, a typo in a privacy setting,
/// and an admin key that is short, missing or given twice stop the start (and
/// `--check-config`) with exit 64, naming the key (and the plan's file and the failing
/// schema path).
#[test]
fn an_invalid_plan_or_a_hash_without_key_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let short_key = dir.path().join("short-admin-key");
    std::fs::write(&short_key, "too-short\n").unwrap();
    let plan = dir.path().join("web-plan.json");
    std::fs::write(
        &plan,
        r#"{"rules": {"events": [{"name": "Signed Up", "rules": {"type": "object"}},
            {"name": "Order Completed", "rules": {"properties": {"properties": {"type": "whatever"}}}}]}}"#,
    )
    .unwrap();
    let cases = [
        (
            format!("[plans.sources.web]\nfile = {plan:?}\n"),
            vec![
                "plans.sources.web.file",
                "web-plan.json",
                "/rules/events/1/rules",
            ],
        ),
        (
            "[privacy]\nhash = [\"userId\"]\n".to_owned(),
            vec!["privacy.hash", "hash_key_file"],
        ),
        (
            "[privacy]\nip = \"anonymize\"\n".to_owned(),
            vec!["privacy.ip"],
        ),
        (
            "[privacy.sources.web]\nuser_agnet = \"drop\"\n".to_owned(),
            vec!["privacy.sources.web.user_agnet"],
        ),
        (
            "[plans.sources.web]\nfile = \"/nonexistent/plan.json\"\n".to_owned(),
            vec!["plans.sources.web.file", "/nonexistent/plan.json"],
        ),
        (
            format!("[admin]\napi_key_file = {short_key:?}\n"),
            vec!["admin.api_key_file", "at least 16 bytes"],
        ),
        (
            "[admin]\napi_key_file = \"/nonexistent/admin-key\"\n".to_owned(),
            vec!["admin.api_key_file", "/nonexistent/admin-key"],
        ),
        (
            format!("[admin]\napi_key_file = {short_key:?}\napi_key_env = \"FE_ADMIN\"\n"),
            vec!["admin.api_key_file", "not both"],
        ),
        (
            "[admin]\napi_key = \"inline-keys-are-refused\"\n".to_owned(),
            vec!["admin.api_key"],
        ),
    ];
    for (text, names) in cases {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, &text).unwrap();
        for extra in [&["--check-config"][..], &[]] {
            let mut args = vec!["--config", path.to_str().unwrap()];
            args.extend_from_slice(extra);
            let out = run(&args, &[]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{text:?}: {stderr}");
            for name in &names {
                assert!(stderr.contains(name), "{stderr} does not name {name}");
            }
        }
    }
}
