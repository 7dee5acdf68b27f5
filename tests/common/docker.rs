//! The Docker engine `scripts/ensure-docker.sh` starts, driven through the `docker` CLI: the
//! project's image, built once per test binary from its own Dockerfile, and containers and
//! volumes that are removed when dropped (also when a test fails).
//!
//! A missing engine or base image makes the test *fail* with what is missing and how to get
//! it, never skip, so a machine without Docker cannot pass CI silently.
//!
//! Builds use the classic builder (`DOCKER_BUILDKIT=0`): it is what the CLI runs where no
//! buildx plugin is installed, as on CI, and its step-by-step output ("Step 4/19 : RUN …",
//! " ---> Using cache") is what the layer-cache test reads.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::OnceCell;

/// The tag the tests build the project's image as.
pub const IMAGE: &str = "firehose-edge:test";

/// The engine `scripts/ensure-docker.sh` starts, used unless `DOCKER_HOST` names another.
pub const DEFAULT_HOST: &str = "unix:///run/firehose-edge-docker.sock";

/// How to get an engine, repeated in every setup panic.
const SETUP_HINT: &str = "`./scripts/test` (the README's test command) installs Debian's docker.io, \
     starts the engine and makes the base images via scripts/ensure-docker.sh; run that script \
     alone, as root, before `cargo test --test image`";

/// Bound for a whole image build: a cold one compiles every dependency in release mode, ~10
/// minutes on a loaded 2-core CI machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// Bound for any other docker command (`stop` included: it waits out the service's drain).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The engine's address: `DOCKER_HOST`, or the one `scripts/ensure-docker.sh` starts.
pub fn host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_HOST.to_owned())
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new("docker");
    command
        .args(args)
        .env("DOCKER_HOST", host())
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// `docker ARGS`, whatever its exit status; panics only if it cannot run or hangs.
pub async fn output(args: &[&str]) -> Output {
    let run = command(args).output();
    match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run `docker`: {e}. {SETUP_HINT}"),
        Err(_) => panic!(
            "`docker {}` did not finish within {COMMAND_TIMEOUT:?}",
            args.join(" ")
        ),
    }
}

/// `docker ARGS`, which must succeed; its standard output, trimmed.
pub async fn docker(args: &[&str]) -> String {
    let out = output(args).await;
    assert!(
        out.status.success(),
        "`docker {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The repository: the build context.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Panics, saying what is missing, unless the engine answers and has the base images the
/// Dockerfile builds from (no registry is reachable to pull them).
pub async fn require_engine() {
    let host = host();
    let version = match command(&["version", "--format", "{{.Server.Version}}"])
        .output()
        .await
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => panic!(
            "no Docker engine answers at {host} ({}). {SETUP_HINT}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("no `docker` CLI ({e}). {SETUP_HINT}"),
    };
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    for base in base_images(&dockerfile) {
        let out = output(&["image", "inspect", "--format", "{{.Id}}", &base]).await;
        assert!(
            out.status.success(),
            "the engine at {host} (Docker {version}) has no image {base}, which the Dockerfile \
             builds from. {SETUP_HINT}"
        );
    }
}

/// The images the Dockerfile's stages start from (not its own stages).
fn base_images(dockerfile: &str) -> Vec<String> {
    let mut stages = Vec::new();
    let mut bases = Vec::new();
    for line in dockerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            let image = words[1].to_owned();
            if let [.., as_, name] = words.as_slice()
                && as_.eq_ignore_ascii_case("AS")
            {
                stages.push(name.to_string());
            }
            if !stages.contains(&image) && !bases.contains(&image) {
                bases.push(image);
            }
        }
    }
    bases
}

/// What [`image`] measured.
#[derive(Debug, Clone)]
pub struct Built {
    /// How long `docker build` took (seconds when every layer was cached; minutes cold).
    pub took: Duration,
    /// The image's size in bytes, as `docker images` reports it.
    pub size: u64,
}

static BUILT: OnceCell<Result<Built, String>> = OnceCell::const_new();

/// [`IMAGE`], built from the repository's own Dockerfile once per test binary; every test
/// awaiting it shares the one build, and its failure.
pub async fn image() -> Built {
    let built = BUILT
        .get_or_init(|| async {
            require_engine().await;
            let started = Instant::now();
            let result = build(&repo(), IMAGE, |_| false).await;
            let took = started.elapsed();
            match result {
                Ok(_) => {
                    let size = docker(&["image", "inspect", "--format", "{{.Size}}", IMAGE]).await;
                    Ok(Built {
                        took,
                        size: size.parse().expect("a size in bytes"),
                    })
                }
                Err(e) => Err(e),
            }
        })
        .await;
    built.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// `docker build --network host -t TAG CONTEXT` of the context's own Dockerfile. Each output
/// line is handed to `stop`; once it returns true the build is cancelled (the engine kills
/// and removes the step's container) and the output so far returned. Err with the output's
/// end if the build fails.
pub async fn build(
    context: &Path,
    tag: &str,
    mut stop: impl FnMut(&str) -> bool,
) -> Result<String, String> {
    let context = context.to_str().unwrap();
    // Host networking: the engine has no bridge, and apt's mirror and the crate registry are
    // reached as the host reaches them.
    let mut child = command(&[
        "build",
        "--network",
        "host",
        "--force-rm",
        "-t",
        tag,
        context,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap_or_else(|e| panic!("cannot run `docker`: {e}. {SETUP_HINT}"));
    // The steps and their output come on stdout; only the CLI's own errors on stderr.
    let mut stderr = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
            .await
            .map(|_| text)
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut transcript = String::new();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let line = without_colours(&line);
            transcript.push_str(&line);
            transcript.push('\n');
            if stop(&line) {
                return None;
            }
        }
        Some(child.wait().await.unwrap())
    };
    let status = tokio::time::timeout(BUILD_TIMEOUT, run)
        .await
        .map_err(|_| format!("`docker build` of {context} took over {BUILD_TIMEOUT:?}"))?;
    let Some(status) = status else {
        child.kill().await.unwrap();
        return Ok(transcript);
    };
    let errors = errors.await.unwrap().unwrap_or_default();
    if status.success() {
        return Ok(transcript);
    }
    let tail: Vec<&str> = transcript.lines().collect();
    let tail = &tail[tail.len().saturating_sub(40)..];
    Err(format!(
        "`docker build` of {context} failed ({status}):\n{}\n{}",
        tail.join("\n"),
        errors.trim()
    ))
}

/// `line` without the terminal colour codes (`ESC [ … m`) the CLI wraps a step's stderr in.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A name no other test (or run) uses: `firehose-edge-test-<pid>-<n>-<what>`.
pub fn unique_name(what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("firehose-edge-test-{}-{n}-{what}", std::process::id())
}

/// Runs `docker ARGS` from a `Drop`, waiting at most [`COMMAND_TIMEOUT`] (a blocking wait:
/// `drop` cannot await).
fn run_blocking(args: &[&str]) {
    let child = std::process::Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", host())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return };
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // A child's exit cannot be awaited with a timeout in std: poll its state.
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
}

/// A named volume, removed when dropped (after the containers using it, if they were
/// declared after it).
pub struct Volume {
    pub name: String,
}

impl Volume {
    pub async fn create(what: &str) -> Volume {
        let volume = Volume {
            name: unique_name(what),
        };
        docker(&["volume", "create", &volume.name]).await;
        volume
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        run_blocking(&["volume", "rm", "--force", &self.name]);
    }
}

/// A container, removed (with `--force`) when dropped.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run --detach --name <unique> ARGS`.
    pub async fn run(what: &str, args: &[String]) -> Container {
        // The guard exists before the container does, so a failed start is cleaned up too.
        let container = Container {
            name: unique_name(what),
        };
        let mut all = vec!["run", "--detach", "--name", &container.name];
        all.extend(args.iter().map(String::as_str));
        docker(&all).await;
        container
    }

    /// `docker exec NAME ARGS`.
    pub async fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", &self.name];
        all.extend_from_slice(args);
        output(&all).await
    }

    /// `docker inspect --format FORMAT NAME`.
    pub async fn inspect(&self, format: &str) -> String {
        docker(&["inspect", "--format", format, &self.name]).await
    }

    /// Everything the service logged (its stderr), one line per entry.
    pub async fn logs(&self) -> String {
        let out = output(&["logs", &self.name]).await;
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// `docker stop --time SECS` (SIGTERM, then SIGKILL after SECS), then the exit code.
    pub async fn stop(&self, secs: u64) -> i64 {
        docker(&["stop", "--time", &secs.to_string(), &self.name]).await;
        self.inspect("{{.State.ExitCode}}").await.parse().unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        run_blocking(&["rm", "--force", "--volumes", &self.name]);
    }
}
