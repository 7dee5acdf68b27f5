//! The README cannot lie: its shell blocks marked `<!-- readme-test -->` are run against the
//! real binary (on the embedded default config, in a scratch directory, with `localhost:5000`
//! and `localhost:9464` pointed at the ports it got), and each command's output is compared
//! with the `# …` comment lines under it — as JSON when they are JSON, else line by line.
//! A command with no comment under it must exit 0. Blocks marked
//! `<!-- readme-test: stopped -->` run after the service stopped.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::WAIT;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// One command and what the README says it prints.
struct Step {
    command: String,
    expected: Option<String>,
}

/// The marked blocks: (runs while the service is stopped, steps).
fn blocks(readme: &str) -> Vec<(bool, Vec<Step>)> {
    let mut out = Vec::new();
    let mut lines = readme.lines().peekable();
    while let Some(line) = lines.next() {
        let stopped = match line.trim() {
            "<!-- readme-test -->" => false,
            "<!-- readme-test: stopped -->" => true,
            _ => continue,
        };
        assert_eq!(
            lines.next().map(str::trim),
            Some("```sh"),
            "a marked block is ```sh"
        );
        let mut steps: Vec<Step> = Vec::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            match line.strip_prefix("# ") {
                Some(comment) => {
                    let step = steps.last_mut().expect("a comment follows a command");
                    let text = step.expected.get_or_insert_with(String::new);
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(comment.trim());
                }
                None if !line.trim().is_empty() => steps.push(Step {
                    command: line.to_owned(),
                    expected: None,
                }),
                None => {}
            }
        }
        out.push((stopped, steps));
    }
    out
}

/// Runs one command with bash in `dir`, the binary first on the PATH.
async fn run(step: &Step, dir: &Path, ingest: &str, admin: &str) {
    let bin = Path::new(env!("CARGO_BIN_EXE_firehose-edge"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let command = step
        .command
        .replace("localhost:5000", ingest)
        .replace("localhost:9464", admin);
    let out = tokio::time::timeout(
        WAIT,
        Command::new("bash")
            .args(["-c", &command])
            .current_dir(dir)
            .env("PATH", path)
            .env("FIREHOSE_EDGE__SERVER__LISTEN", ingest)
            .env("FIREHOSE_EDGE__ADMIN__LISTEN", admin)
            .output(),
    )
    .await
    .expect("the command finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match &step.expected {
        None => assert!(out.status.success(), "`{}` failed: {stderr}", step.command),
        Some(expected) => match serde_json::from_str::<Value>(&expected.replace('\n', "")) {
            Ok(want) => {
                let got: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
                    panic!("`{}` printed no JSON ({e}): {stdout}{stderr}", step.command)
                });
                assert_eq!(got, want, "`{}`", step.command);
            }
            Err(_) => {
                for want in expected.lines() {
                    assert!(
                        stdout.lines().any(|l| l.trim() == want),
                        "`{}` should print `{want}`; printed: {stdout}{stderr}",
                        step.command
                    );
                }
            }
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_examples_answer_what_the_readme_says() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks = blocks(&readme);
    assert!(
        blocks.len() >= 4,
        "the marked blocks were found: {}",
        blocks.len()
    );
    let dir = tempfile::tempdir().unwrap();
    // The embedded default config, as a new user runs it (relative data/ paths), on ports
    // the OS picks.
    let mut child = Command::new(env!("CARGO_BIN_EXE_firehose-edge"))
        .current_dir(dir.path())
        .env("FIREHOSE_EDGE__SERVER__LISTEN", "127.0.0.1:0")
        .env("FIREHOSE_EDGE__ADMIN__LISTEN", "127.0.0.1:0")
        // The default 1 GiB free-space floor could refuse on a nearly full disk.
        .env("FIREHOSE_EDGE__QUEUE__MIN_FREE_BYTES", "1048576")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let field = |line: &str, key: &str| {
        line.split(&format!("{key}="))
            .nth(1)
            .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
    };
    let (ingest, admin) = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let (Some(i), Some(a)) = (field(&line, "ingest"), field(&line, "admin")) {
                return (i, a);
            }
        }
        panic!("the binary exited before listening");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    for (_, steps) in blocks.iter().filter(|(stopped, _)| !stopped) {
        for step in steps {
            run(step, dir.path(), &ingest, &admin).await;
        }
    }
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the service stops cleanly: {status}");
    for (_, steps) in blocks.iter().filter(|(stopped, _)| *stopped) {
        for step in steps {
            run(step, dir.path(), &ingest, &admin).await;
        }
    }
}
