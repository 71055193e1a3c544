//! The Kubernetes manifests as written: the StatefulSet's container (command, args, env, ports, probes,
//! preStop hook, user, read-only root filesystem) and the ConfigMap's config file, run for pods ferry-0..2
//! the way the kubelet would, in containers of the image on a Docker network the test makes. The pod name
//! is the container's hostname, the downward-API values are substituted into the env, `$(VAR)` references
//! are expanded, and the headless Service's per-pod DNS names (`ferry-N.ferry`,
//! `ferry-N.ferry.NAMESPACE.svc`) are network aliases. The three form one cluster, serve an RF 3 topic, the
//! probes answer as specified, and the preStop hook hands a broker's leaderships away before a clean stop
//! within the grace period.
//!
//! Needs Docker and the image (`deploy/image.sh`; `.ci/run` builds it and runs this):
//! `cargo test -p ferry-tests --test kubernetes -- --ignored`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_tests::docker::{docker, docker_quiet, image, run};
use serde_yaml::Value;

const NAMESPACE: &str = "default";

fn manifest(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes")
        .join(name);
    serde_yaml::from_str(&std::fs::read_to_string(&path).expect("manifest reads"))
        .expect("manifest parses")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `$(NAME)` references expanded from the variables defined before, as the kubelet does.
fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = value.to_owned();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// What the kubelet would give the container of pod `pod`: its environment, in order.
fn pod_env(container: &Value, pod: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for e in container["env"].as_sequence().expect("env") {
        let name = e["name"].as_str().expect("env name").to_owned();
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => expand(v, &env),
            (_, Value::String(path)) => match path.as_str() {
                "metadata.name" => pod.to_owned(),
                "metadata.namespace" => NAMESPACE.to_owned(),
                other => panic!("downward-API field {other} is not substituted by this test"),
            },
            _ => panic!("env {name}: neither a value nor a fieldRef"),
        };
        env.insert(name, value);
    }
    env
}

struct Pods {
    network: String,
    names: Vec<String>,
    volumes: Vec<String>,
    _config: tempfile::TempDir,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for n in &self.names {
            docker_quiet(&["rm", "-f", n]);
        }
        for v in &self.volumes {
            docker_quiet(&["volume", "rm", "-f", v]);
        }
        docker_quiet(&["network", "rm", &self.network]);
    }
}

fn http_port(container: &str) -> String {
    let out = docker(&["port", container, "7480/tcp"]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .next()
        .expect("a published port")
        .trim()
        .to_owned()
}

fn exec(container: &str, cmd: &[String]) -> std::process::Output {
    run(
        Command::new("docker").arg("exec").arg(container).args(cmd),
        None,
        Duration::from_secs(90),
    )
}

#[test]
#[ignore = "needs Docker and the image from deploy/image.sh (.ci/run builds it and runs this)"]
fn the_statefulset_as_written_forms_a_cluster_and_answers_its_probes() {
    let sts = manifest("statefulset.yaml");
    let cm = manifest("configmap.yaml");
    let service = sts["spec"]["serviceName"]
        .as_str()
        .expect("serviceName")
        .to_owned();
    let name = sts["metadata"]["name"].as_str().unwrap().to_owned();
    let replicas = sts["spec"]["replicas"].as_u64().expect("replicas") as usize;
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    let pod_spec = &sts["spec"]["template"]["spec"];
    let container = &pod_spec["containers"][0];
    let command = strings(&container["command"]);
    let args = strings(&container["args"]);
    let user = pod_spec["securityContext"]["runAsUser"]
        .as_u64()
        .expect("runAsUser");
    let group = pod_spec["securityContext"]["runAsGroup"]
        .as_u64()
        .expect("runAsGroup");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let grace = pod_spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    let pre_stop = strings(&container["lifecycle"]["preStop"]["exec"]["command"]);
    let mount_of = |volume: &str| -> String {
        container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume)
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("no mount of {volume}"))
            .to_owned()
    };
    let (data_mount, config_mount) = (mount_of("data"), mount_of("config"));
    let config_dir = tempfile::tempdir().unwrap();
    for (file, text) in cm["data"].as_mapping().expect("configmap data") {
        let path = config_dir.path().join(file.as_str().unwrap());
        std::fs::write(&path, text.as_str().unwrap()).unwrap();
        // The kubelet's files are readable by the pod's user.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
    }
    std::fs::set_permissions(
        config_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let tag = format!("ferry-k8s-{}", std::process::id());
    let mut pods = Pods {
        network: tag.clone(),
        names: Vec::new(),
        volumes: Vec::new(),
        _config: config_dir,
    };
    docker(&["network", "create", &pods.network]);
    // Starts pod `i` as the kubelet would (its container named after the pod).
    let start_pod = |pods: &mut Pods, i: usize| {
        let pod = format!("{name}-{i}");
        let env = pod_env(container, &pod);
        let cname = format!("{tag}-{pod}");
        let volume = format!("{tag}-data-{pod}");
        pods.names.push(cname.clone());
        pods.volumes.push(volume.clone());
        let mut cmd: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            cname.clone(),
            "--hostname".into(),
            pod.clone(),
            "--network".into(),
            pods.network.clone(),
            "--network-alias".into(),
            format!("{pod}.{service}"),
            "--network-alias".into(),
            format!("{pod}.{service}.{NAMESPACE}.svc"),
            "--read-only".into(),
            "--user".into(),
            format!("{user}:{group}"),
            "--cap-drop".into(),
            "ALL".into(),
            "--security-opt".into(),
            "no-new-privileges".into(),
            "-p".into(),
            "127.0.0.1::7480".into(),
            "-v".into(),
            format!("{volume}:{data_mount}"),
            "-v".into(),
            format!("{}:{config_mount}:ro", pods._config.path().display()),
            "--entrypoint".into(),
            command[0].clone(),
        ];
        for (k, v) in &env {
            cmd.push("-e".into());
            cmd.push(format!("{k}={v}"));
        }
        cmd.push(image());
        cmd.extend(command[1..].iter().cloned());
        cmd.extend(args.iter().cloned());
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        docker(&refs);
    };
    for i in 0..replicas {
        start_pod(&mut pods, i);
    }
    let probe = |kind: &str| {
        container[kind]["httpGet"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{kind}"))
            .to_owned()
    };
    let (startup, readiness, liveness) = (
        probe("startupProbe"),
        probe("readinessProbe"),
        probe("livenessProbe"),
    );
    let ports: Vec<String> = pods.names.iter().map(|c| http_port(c)).collect();
    for port in &ports {
        ferry_tests::docker::poll_until("the startup probe", Duration::from_secs(60), || {
            ferry_tests::http_get(port, &startup).0 == 200
        });
        assert_eq!(ferry_tests::http_get(port, &liveness).0, 200);
    }
    for port in &ports {
        ferry_tests::docker::poll_until("every pod ready", Duration::from_secs(90), || {
            ferry_tests::http_get(port, &readiness).0 == 200
        });
    }
    let ferry = |i: usize, args: &[&str]| {
        let mut cmd = vec!["/usr/local/bin/ferry".to_owned()];
        cmd.extend(args.iter().map(|s| s.to_string()));
        exec(&format!("{tag}-{name}-{i}"), &cmd)
    };
    let out = ferry(
        0,
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--replicas",
            "3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ferry_tests::docker::poll_until("the cluster healthy", Duration::from_secs(60), || {
        ferry(1, &["cluster", "health"]).status.success()
    });
    // Clients are told the pods' names under the headless Service.
    let out = ferry(2, &["cluster", "status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let addresses: Vec<&str> = status["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["address"].as_str())
        .collect();
    assert_eq!(
        addresses,
        [
            "ferry-0.ferry.default.svc:7400",
            "ferry-1.ferry.default.svc:7400",
            "ferry-2.ferry.default.svc:7400"
        ]
    );
    let input: String = (0..300).map(|i| format!("order-{i}\n")).collect();
    let out = run(
        Command::new("docker").args([
            "exec",
            "-i",
            &pods.names[0],
            "/usr/local/bin/ferry",
            "produce",
            "orders",
        ]),
        Some(input.as_bytes()),
        Duration::from_secs(90),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ferry(
        2,
        &["consume", "orders", "--from", "beginning", "--exit-at-end"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        300,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `kubectl scale --replicas 4`: pod ferry-3 (broker 4, not among the ConfigMap's peers) from the same
    // template joins on its own (`auto_join`) and takes replicas.
    assert!(
        cm["data"]["ferry.toml"]
            .as_str()
            .unwrap()
            .contains("auto_join = true"),
        "the ConfigMap lets a scale-up join"
    );
    start_pod(&mut pods, replicas);
    ferry_tests::docker::poll_until(
        "broker 4 joined, active, with replicas",
        Duration::from_secs(120),
        || {
            let out = ferry(0, &["cluster", "status", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["brokers"].as_array().is_some_and(|bs| {
                bs.iter().any(|b| {
                    b["id"] == 4
                        && b["state"] == "active"
                        && b["up"] == true
                        && b["replicas"].as_u64() > Some(0)
                })
            }) && v["moving_partitions"] == 0
        },
    );
    let port = http_port(&pods.names[replicas]);
    ferry_tests::docker::poll_until("the new pod ready", Duration::from_secs(60), || {
        ferry_tests::http_get(&port, &readiness).0 == 200
    });

    // The preStop hook as written: ferry-0 leads nothing afterwards; then a stop within the grace period is
    // clean (exit 0).
    let out = exec(&pods.names[0], &pre_stop);
    assert!(
        out.status.success(),
        "preStop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ferry(1, &["topic", "describe", "orders", "-o", "json"]);
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let leaders: Vec<u64> = d["partition_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["leader"].as_u64().unwrap())
        .collect();
    assert!(
        !leaders.contains(&1),
        "broker 1 (ferry-0) still leads after its preStop hook: {leaders:?}"
    );
    let started = Instant::now();
    docker(&["stop", "-t", &grace.to_string(), &pods.names[0]]);
    let out = docker(&["inspect", "-f", "{{.State.ExitCode}}", &pods.names[0]]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "ferryd did not stop cleanly on SIGTERM"
    );
    assert!(
        started.elapsed() < Duration::from_secs(grace / 2),
        "shutdown took {:?}",
        started.elapsed()
    );
}
