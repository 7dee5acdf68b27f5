//! The Kubernetes deployment (`deploy/kubernetes/`), checked offline. kubernetes-validate (PyPI,
//! installed into ./.venv by the test command; it bundles the API's JSON schemas) validates
//! every manifest against Kubernetes 1.32 and 1.37 in strict mode, which refuses unknown
//! fields — and a broken copy proves it does. What no schema can say is checked on the parsed
//! YAML: the Services, the PDB and the ServiceMonitor select what they should, probes and
//! targets name real ports, the termination grace outlasts the service's own, the queue sits
//! on the claim template's volume, sized for its budget, the drain Job mounts a claim the
//! StatefulSet makes, and the ConfigMap's `firehose.toml` is accepted by the real binary.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// 1.32: the release in which the StatefulSet's `persistentVolumeClaimRetentionPolicy`, which
/// the queues depend on, is GA (all else used is on by default since 1.30: the preStop `sleep`);
/// 1.37: the newest the pinned validator bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.32", "1.37"];

/// Files that are not Kubernetes API objects the validator has schemas for: kustomize's own
/// kind, and the Prometheus Operator's CRD. Both are checked structurally below.
const NOT_CORE_API: [&str; 2] = ["kustomization.yaml", "servicemonitor.yaml"];

/// Files `kubectl apply -k` must not apply: the CRD, and the per-claim drain template.
const NOT_IN_KUSTOMIZATION: [&str; 3] = [
    "kustomization.yaml",
    "servicemonitor.yaml",
    "drain-job.yaml",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// A tool of ./.venv, which `scripts/ensure-sdks.sh` fills.
fn venv(name: &str) -> PathBuf {
    let path = root().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/test, which installs kubernetes-validate (and with it \
         PyYAML) into ./.venv with scripts/ensure-sdks.sh",
        path.display()
    );
    path
}

/// The YAML files of `deploy/kubernetes/`, by file name.
fn yaml_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    assert!(names.len() >= 8, "{names:?}");
    names
}

/// Runs kubernetes-validate in strict mode over `files`. Ok with the number of documents it
/// passed; Err with its output when it refused one, or found no schema for one: it only warns
/// (exit 0) for a kind or apiVersion it does not know, such as a typo in `apiVersion`, which
/// would leave that document unchecked.
fn validate(files: &[PathBuf]) -> Result<usize, String> {
    let mut cmd = Command::new(venv("kubernetes-validate"));
    cmd.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes-version", version]);
    }
    let out = cmd.args(files).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
        .count();
    if !out.status.success() || passed != stdout.lines().count() {
        return Err(report);
    }
    Ok(passed)
}

/// Every document of `files`, parsed by PyYAML, by file name.
fn parse(files: &[PathBuf]) -> BTreeMap<String, Vec<Value>> {
    let out = Command::new(venv("python"))
        .arg(root().join("tests/py/k8s_manifests.py"))
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The parsed manifests of `deploy/kubernetes/`.
struct Manifests {
    files: BTreeMap<String, Vec<Value>>,
}

impl Manifests {
    fn load() -> Manifests {
        let paths: Vec<PathBuf> = yaml_files()
            .iter()
            .map(|n| manifests_dir().join(n))
            .collect();
        Manifests {
            files: parse(&paths),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Value> {
        self.files.values().flatten()
    }

    fn of_kind<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Value> + use<'a> {
        let kind = kind.to_owned();
        self.all().filter(move |d| d["kind"] == kind.as_str())
    }

    /// The one object of `kind` named `name`.
    fn get(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .of_kind(kind)
            .filter(|d| d["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "one {kind} {name}");
        found[0]
    }

    /// The one object of `kind`.
    fn only(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self.of_kind(kind).collect();
        assert_eq!(found.len(), 1, "one {kind}");
        found[0]
    }

    fn statefulset(&self) -> &Value {
        self.only("StatefulSet")
    }

    fn job(&self) -> &Value {
        self.only("Job")
    }
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .unwrap_or_else(|| panic!("a map of labels: {v}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

/// Whether every label of `selector` is on `labels` (a Service's selector, a `matchLabels`).
fn selects(selector: &Value, labels: &Value) -> bool {
    let (selector, labels) = (str_map(selector), str_map(labels));
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn pod_labels(workload: &Value) -> &Value {
    &workload["spec"]["template"]["metadata"]["labels"]
}

fn container(workload: &Value) -> &Value {
    let containers = pod_spec(workload)["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The container port number a probe or a Service's `targetPort` names (by name or number).
fn container_port(container: &Value, port: &Value) -> u64 {
    let ports = container["ports"].as_array().unwrap();
    let found = ports.iter().find(|p| match port {
        Value::String(name) => p["name"] == name.as_str(),
        Value::Number(n) => p["containerPort"].as_u64() == n.as_u64(),
        _ => false,
    });
    found
        .unwrap_or_else(|| panic!("port {port} is not a container port: {ports:?}"))
        .get("containerPort")
        .and_then(Value::as_u64)
        .unwrap()
}

/// The port of a `host:port` listen address.
fn listen_port(config: &Value, section: &str) -> u64 {
    let listen = config[section]["listen"].as_str().unwrap();
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

/// A Kubernetes quantity of bytes (`24Gi`, `512Mi`, `1000`).
fn bytes(quantity: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
    ];
    let (digits, unit) = units
        .iter()
        .find_map(|(s, m)| quantity.strip_suffix(s).map(|d| (d, *m)))
        .unwrap_or((quantity, 1));
    digits.parse::<u64>().expect("a whole quantity") * unit
}

/// The mount path of the volume named `volume`.
fn mount_path<'a>(container: &'a Value, volume: &str) -> &'a str {
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume)
        .unwrap_or_else(|| panic!("no volumeMount for volume {volume}"))["mountPath"]
        .as_str()
        .unwrap()
}

/// The `ENV NAME=value` lines of the Dockerfile: the image's environment, under the pod's.
fn image_env() -> Vec<(String, String)> {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    // Only the runtime stage's environment reaches the container.
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    runtime
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("ENV NAME=value");
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

/// The uid the Dockerfile creates its user with (`useradd … --uid N`).
fn image_uid() -> u64 {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let after = dockerfile.split("--uid ").nth(1).expect("useradd --uid");
    after.split_whitespace().next().unwrap().parse().unwrap()
}

/// The environment the service sees in `container`: the image's, then the pod's over it.
fn process_env(container: &Value) -> Vec<(String, String)> {
    let mut env = image_env();
    for var in container["env"].as_array().into_iter().flatten() {
        let value = var["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{var}: only literal values are checked here"));
        env.push((var["name"].as_str().unwrap().to_owned(), value.to_owned()));
    }
    env
}

/// The configuration file `container` is started with: the path after `--config`, which must
/// be a key of the ConfigMap mounted at its directory. Returns (path, ConfigMap text).
fn config_file(m: &Manifests, workload: &Value) -> (String, String) {
    let c = container(workload);
    let args: Vec<&str> = c["command"]
        .as_array()
        .into_iter()
        .chain(c["args"].as_array())
        .flatten()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .unwrap_or_else(|| panic!("{args:?} has no --config"));
    let path = args[at + 1];
    let (dir, key) = path.rsplit_once('/').unwrap();
    let volume = pod_spec(workload)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| !v["configMap"].is_null())
        .expect("a ConfigMap volume");
    assert_eq!(
        mount_path(c, volume["name"].as_str().unwrap()),
        dir,
        "{path}"
    );
    let map = m.get("ConfigMap", volume["configMap"]["name"].as_str().unwrap());
    let text = map["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has no key {key}"));
    (path.to_owned(), text.to_owned())
}

/// The configuration `workload`'s process runs with, as the service computes it (its file,
/// then the image's and the pod's `FIREHOSE_EDGE__…` variables), as JSON.
fn effective_config(m: &Manifests, workload: &Value, dir: &Path) -> Value {
    let (_, text) = config_file(m, workload);
    let path = dir.join("firehose.toml");
    std::fs::write(&path, text).unwrap();
    let vars = process_env(container(workload))
        .into_iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let name = &workload["metadata"]["name"];
    let config = firehose_edge::config::env_overrides(vars)
        .and_then(|env| firehose_edge::config::Config::load(Some(&path), env))
        .unwrap_or_else(|e| panic!("the configuration of {name}: {e}"));
    serde_json::to_value(&config).unwrap()
}

#[test]
fn every_manifest_passes_the_strict_schemas() {
    let files: Vec<PathBuf> = yaml_files()
        .iter()
        .filter(|n| !NOT_CORE_API.contains(&n.as_str()))
        .map(|n| manifests_dir().join(n))
        .collect();
    let documents: usize = parse(&files).values().map(Vec::len).sum();
    assert!(documents >= 8, "{documents} documents");
    let passed = validate(&files).unwrap_or_else(|report| panic!("{report}"));
    assert_eq!(passed, documents * KUBERNETES_VERSIONS.len());
}

#[test]
fn the_validator_refuses_unknown_fields_and_unknown_api_versions() {
    let original = std::fs::read_to_string(manifests_dir().join("statefulset.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Mistakes only a strict check catches offline: without --strict the two typos pass, and
    // the unknown apiVersion passes even with it (a warning, exit 0) unless, as in
    // `validate`, a warning is a failure.
    let cases = [
        // A typo deep in a container (a shared definition): a writable root file system.
        (
            "readOnlyRootFilesystem:",
            "readOnlyRootFileSystem:",
            "readOnlyRootFileSystem",
        ),
        // A typo in the StatefulSet's own spec.
        ("whenScaled:", "whenScaledDown:", "whenScaledDown"),
        // A wrong type.
        (
            "containerPort: 5000",
            "containerPort: \"5000\"",
            "'5000' is not of type 'integer'",
        ),
        // An apiVersion the validator has no schema for: it only warns.
        (
            "apiVersion: apps/v1",
            "apiVersion: apps/v2",
            "Couldn't find schema",
        ),
    ];
    for (from, to, expected) in cases {
        assert_eq!(original.matches(from).count(), 1, "{from}");
        let broken = dir.path().join("statefulset.yaml");
        std::fs::write(&broken, original.replacen(from, to, 1)).unwrap();
        let report = validate(&[broken]).expect_err(to);
        assert!(report.contains(expected), "{to}: {report}");
    }
}

#[test]
fn the_servicemonitor_scrapes_the_metrics_service() {
    let m = Manifests::load();
    let monitor = &m.files["servicemonitor.yaml"];
    assert_eq!(monitor.len(), 1);
    let monitor = &monitor[0];
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    let selected: Vec<&str> = m
        .of_kind("Service")
        .filter(|s| selects(selector, &s["metadata"]["labels"]))
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    // Exactly the metrics Service: another match would scrape every replica twice.
    assert_eq!(selected, ["firehose-edge-metrics"]);
    let service = m.get("Service", "firehose-edge-metrics");
    let port_names: BTreeSet<&str> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        let port = endpoint["port"].as_str().expect("an endpoint port by name");
        assert!(port_names.contains(port), "{port} not in {port_names:?}");
        assert_eq!(endpoint["path"], "/metrics");
    }
}

#[test]
fn kustomization_lists_every_manifest_but_the_crd_and_the_drain_template() {
    let m = Manifests::load();
    let kustomization = &m.files["kustomization.yaml"][0];
    assert_eq!(kustomization["kind"], "Kustomization");
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let files = yaml_files();
    let expected: BTreeSet<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|n| !NOT_IN_KUSTOMIZATION.contains(n))
        .collect();
    assert_eq!(listed, expected);
    // Its `images` entry rewrites the image the workloads name.
    let sts_image = container(m.statefulset())["image"].as_str().unwrap();
    let name = sts_image.split(':').next().unwrap();
    assert!(
        kustomization["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == name),
        "no images entry for {name}"
    );
    assert_eq!(container(m.job())["image"], sts_image, "drain Job image");
}

#[test]
fn services_pdb_and_hpa_point_at_the_statefulset_pods() {
    let m = Manifests::load();
    let sts = m.statefulset();
    let labels = pod_labels(sts);
    let job_labels = pod_labels(m.job());
    let c = container(sts);
    let dir = tempfile::tempdir().unwrap();
    let config = effective_config(&m, sts, dir.path());
    assert!(selects(&sts["spec"]["selector"]["matchLabels"], labels));

    for service in m.of_kind("Service") {
        let name = service["metadata"]["name"].as_str().unwrap();
        let selector = &service["spec"]["selector"];
        assert!(selects(selector, labels), "{name} selects no replica");
        // The drain Job's pod listens on nothing: it must never be an endpoint.
        assert!(
            !selects(selector, job_labels),
            "{name} selects the drain Job"
        );
        for port in service["spec"]["ports"].as_array().unwrap() {
            container_port(c, &port["targetPort"]);
        }
    }
    let headless = m.get("Service", sts["spec"]["serviceName"].as_str().unwrap());
    assert_eq!(headless["spec"]["clusterIP"], "None");

    let ingest = m.get("Service", "firehose-edge");
    let ports = ingest["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["port"], 5000);
    assert_eq!(
        container_port(c, &ports[0]["targetPort"]),
        listen_port(&config, "server")
    );

    let metrics = m.get("Service", "firehose-edge-metrics");
    let admin = listen_port(&config, "admin");
    let ports = metrics["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(container_port(c, &ports[0]["targetPort"]), admin);
    let annotations = str_map(&metrics["metadata"]["annotations"]);
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], admin.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let pdb = m.only("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    assert!(!selects(
        &pdb["spec"]["selector"]["matchLabels"],
        job_labels
    ));

    let hpa = m.only("HorizontalPodAutoscaler");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        (&target["apiVersion"], &target["kind"], &target["name"]),
        (&sts["apiVersion"], &sts["kind"], &sts["metadata"]["name"])
    );
    assert_eq!(
        (&hpa["spec"]["minReplicas"], &hpa["spec"]["maxReplicas"]),
        (&Value::from(2), &Value::from(10))
    );
    let cpu = &hpa["spec"]["metrics"][0]["resource"];
    assert_eq!(cpu["name"], "cpu");
    assert_eq!(cpu["target"]["averageUtilization"], 70);
    // Utilization is a share of the request; and a `replicas` in the manifest would undo the
    // HPA's count at every apply.
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(
        sts["spec"].get("replicas").is_none(),
        "the HPA owns replicas"
    );
}

#[test]
fn the_pods_probe_real_ports_and_outlast_the_grace_period() {
    let m = Manifests::load();
    let dir = tempfile::tempdir().unwrap();
    let sts = m.statefulset();
    let c = container(sts);
    let config = effective_config(&m, sts, dir.path());
    let admin = listen_port(&config, "admin");
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(container_port(c, &get["port"]), admin, "{probe}");
    }
    let grace = config["shutdown"]["grace_period"].as_u64().unwrap();
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let termination = pod_spec(sts)["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        termination > pre_stop + grace,
        "terminationGracePeriodSeconds {termination} <= preStop {pre_stop} s \
         + shutdown.grace_period {grace} s"
    );
    // Set explicitly, not left to the default.
    assert!(
        process_env(c)
            .iter()
            .any(|(k, _)| k == "FIREHOSE_EDGE__SHUTDOWN__GRACE_PERIOD")
    );
    let job = m.job();
    let job_config = effective_config(&m, job, dir.path());
    assert!(
        pod_spec(job)["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap()
            > job_config["shutdown"]["grace_period"].as_u64().unwrap()
    );
}

#[test]
fn each_replica_keeps_its_queue_on_a_claim_sized_for_the_budget() {
    let m = Manifests::load();
    let dir = tempfile::tempdir().unwrap();
    let sts = m.statefulset();
    let config = effective_config(&m, sts, dir.path());
    let templates = sts["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert_eq!(templates.len(), 1);
    let claim = &templates[0];
    let claim_name = claim["metadata"]["name"].as_str().unwrap();
    let mount = mount_path(container(sts), claim_name);
    let queue_path = config["queue"]["path"].as_str().unwrap();
    assert!(
        Path::new(queue_path).starts_with(mount),
        "queue.path {queue_path} is not on the claim's volume at {mount}"
    );
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"],
        serde_json::json!({"whenScaled": "Retain", "whenDeleted": "Retain"})
    );
    assert_eq!(
        claim["spec"]["accessModes"],
        serde_json::json!(["ReadWriteOncePod"])
    );
    // The README's rule: sled's files take ~2-2.5x the budget, plus the free-space floor, in
    // what the file system leaves a non-root process (ext4 keeps ~5 % for root, ~2 % metadata).
    let size = bytes(
        claim["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .unwrap(),
    );
    let budget = config["queue"]["max_bytes"].as_u64().unwrap();
    let floor = config["queue"]["min_free_bytes"].as_u64().unwrap();
    assert!(
        size as f64 * 0.93 >= 2.5 * budget as f64 + floor as f64,
        "a {size}-byte claim is too small for a {budget}-byte budget and a {floor}-byte floor"
    );
    // The README's rule: memory does not follow the budget (a start reads each tree's record
    // and last entry, the compactor bounds sled's values): the measured ceiling is 256 MiB,
    // and the limit leaves twice that, whatever the budget. A limit that grew with the budget
    // again would mean the rule changed without the README.
    let memory = bytes(
        container(sts)["resources"]["limits"]["memory"]
            .as_str()
            .expect("a memory limit"),
    );
    assert!(
        memory >= 2 * (256 << 20),
        "twice the 256 MiB ceiling: {memory}"
    );
    assert!(
        (memory as f64) < budget as f64 / 4.0,
        "memory is sized from the measurements, not from the {budget}-byte budget"
    );

    // The drain Job mounts a claim of that template, at the same path, with the same config.
    let job = m.job();
    let volume = pod_spec(job)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| !v["persistentVolumeClaim"].is_null())
        .expect("a claim volume");
    let job_claim = volume["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap();
    let prefix = format!(
        "{claim_name}-{}-",
        sts["metadata"]["name"].as_str().unwrap()
    );
    let ordinal = job_claim
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{job_claim} is not a claim of {prefix}N"));
    ordinal.parse::<u32>().expect("an ordinal");
    // One substitution of "<statefulset>-<ordinal>" retargets the Job (README's steps).
    let pod = format!("{}-{ordinal}", sts["metadata"]["name"].as_str().unwrap());
    let job_name = job["metadata"]["name"].as_str().unwrap();
    assert!(job_name.ends_with(&pod), "{job_name} does not name {pod}");
    assert_eq!(
        mount_path(container(job), volume["name"].as_str().unwrap()),
        mount
    );
    let job_config = effective_config(&m, job, dir.path());
    assert_eq!(
        job_config, config,
        "the drain Job runs with the replicas' configuration"
    );
    assert_eq!(config_file(&m, job), config_file(&m, sts));
    assert_eq!(
        job["spec"]["template"]["spec"]["restartPolicy"],
        "OnFailure"
    );
    assert!(job["spec"]["backoffLimit"].as_u64().is_some());
    let args = container(job)["args"].as_array().unwrap();
    assert!(args.iter().any(|a| a == "drain"), "{args:?}");

    // And the Job's command line really drains: run exactly its arguments (the config path
    // pointed at a copy of the ConfigMap) over an empty queue: it finishes at once, exit 0.
    let orphan = dir.path().join("orphan");
    let queue_config = firehose_edge::config::QueueConfig {
        path: orphan.clone(),
        ..Default::default()
    };
    firehose_edge::queue::Queue::open(&queue_config, &["log_user_events".to_owned()])
        .unwrap()
        .close()
        .unwrap();
    let (in_pod, text) = config_file(&m, job);
    let copy = dir.path().join("firehose.toml");
    std::fs::write(&copy, &text).unwrap();
    let args: Vec<String> = args
        .iter()
        .map(|a| a.as_str().unwrap())
        .map(|a| {
            if a == in_pod {
                copy.to_str().unwrap()
            } else {
                a
            }
            .to_owned()
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_firehose-edge"))
        .args(&args)
        .env_clear()
        .envs(process_env(container(job)))
        .env("FIREHOSE_EDGE__QUEUE__PATH", &orphan)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    assert!(
        stderr.contains("drained: 0 events left the queue, 0 remain"),
        "{stderr}"
    );
}

#[test]
fn the_pods_run_as_the_image_user_with_irsa_and_no_secrets() {
    let m = Manifests::load();
    let account = m.only("ServiceAccount");
    let role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        .as_str()
        .expect("the IRSA annotation");
    assert!(role.starts_with("arn:aws:iam::"), "{role}");
    assert_eq!(m.of_kind("Secret").count(), 0);
    for workload in [m.statefulset(), m.job()] {
        let name = workload["metadata"]["name"].as_str().unwrap();
        let pod = pod_spec(workload);
        assert_eq!(
            pod["serviceAccountName"], account["metadata"]["name"],
            "{name}"
        );
        let security = &pod["securityContext"];
        assert_eq!(security["runAsNonRoot"], true, "{name}");
        // runAsNonRoot cannot check the image's user by name: the uid must be given.
        assert_eq!(security["runAsUser"].as_u64(), Some(image_uid()), "{name}");
        let c = container(workload);
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{name}"
        );
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{name}"
        );
        for (key, _) in process_env(c) {
            assert!(
                !key.starts_with("AWS_"),
                "{name}: {key} set in the manifest"
            );
        }
    }
}

#[test]
fn the_real_binary_accepts_the_configmap() {
    let m = Manifests::load();
    let dir = tempfile::tempdir().unwrap();
    let sts = m.statefulset();
    let (_, text) = config_file(&m, sts);
    let path = dir.path().join("firehose.toml");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_firehose-edge"))
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .env_clear()
        .envs(process_env(container(sts)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "firehose-edge --check-config refuses the ConfigMap's firehose.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configuration is valid\n"
    );
    let config = effective_config(&m, sts, dir.path());
    assert_eq!(config["sink"]["kind"], "firehose");
}
