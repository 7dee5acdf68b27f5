//! Running an SDK driver (a script in tests/py or tests/js that drives an official SDK and
//! prints one JSON report) and the checks that say what is missing when it cannot run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// The repository's root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, checked to import `modules` (the SDKs `scripts/ensure-sdks.sh`
/// installs).
pub fn python(modules: &str) -> PathBuf {
    let python = root().join(".venv/bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import {modules}: run ./scripts/test, which installs them into ./.venv \
         with scripts/ensure-sdks.sh",
        python.display()
    );
    python
}

/// The venv's python with everything a browser test needs: Chromium, chromedriver and
/// selenium.
pub fn browser_python() -> PathBuf {
    for (what, path) in [
        ("/usr/bin/chromium", "/usr/bin/chromium"),
        ("/usr/bin/chromedriver", "/usr/bin/chromedriver"),
    ] {
        assert!(
            Path::new(path).exists(),
            "{what} is missing: run ./scripts/test, which installs Chromium and chromedriver \
             (apt-get) with scripts/ensure-browser.sh"
        );
    }
    python("selenium")
}

/// Runs a driver (at most `limit`) and returns its report; panics with its output if it
/// fails.
pub async fn run(mut command: tokio::process::Command, what: &str, limit: Duration) -> Value {
    let out = tokio::time::timeout(limit, command.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what} finishes within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what} runs ({e}; Node.js and python3 are needed)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: {e}: {stdout} {stderr}"));
    assert!(out.status.success(), "{what} failed: {report:#} {stderr}");
    report
}

/// A `node` command in tests/js, after checking that `package` is installed there.
pub fn node(script: &str, package: &str) -> tokio::process::Command {
    crate::common::matrix::npm_version(package);
    let mut command = tokio::process::Command::new("node");
    command.current_dir(root().join("tests/js")).arg(script);
    command
}

/// Records of `streams`, by the id under `key` (all copies), each marked with its `stream`.
pub fn by_id(
    streams: &[&str],
    key: &str,
    lines: impl Fn(&str) -> Vec<Value>,
) -> std::collections::HashMap<String, Vec<Value>> {
    let mut out: std::collections::HashMap<String, Vec<Value>> = Default::default();
    for stream in streams {
        for mut record in lines(stream) {
            record["stream"] = (*stream).into();
            let id = record[key].as_str().unwrap_or_default().to_owned();
            out.entry(id).or_default().push(record);
        }
    }
    out
}
