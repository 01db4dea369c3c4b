//! The deployment files speak the binaries' language: every variable that
//! docker-compose.yml, deploy/k8s and deploy/render.yaml give a service is
//! one its binary reads (per its `--help`), ports match the defaults, and
//! `.env.example` only holds variables the compose file uses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

mod common;
use common::binary;

const SERVICES: [&str; 4] = [
    "webhook-gateway",
    "processor",
    "api-gateway",
    "whatsapp-clone",
];
/// Read by the logging library rather than declared to clap.
const RUNTIME_VARIABLES: [&str; 1] = ["RUST_LOG"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `(variables, default PORT)` from `<binary> --help` (and `serve --help`).
fn accepted(service: &str) -> (BTreeSet<String>, Option<String>) {
    let help_of = |args: &[&str]| {
        let output = Command::new(binary(service))
            .args(args)
            .output()
            .expect("binaries are built");
        String::from_utf8(output.stdout).unwrap()
    };
    let mut help = help_of(&["--help"]);
    if service == "whatsapp-clone" {
        help += &help_of(&["serve", "--help"]);
    }
    let mut names: BTreeSet<String> = RUNTIME_VARIABLES.iter().map(|s| s.to_string()).collect();
    let mut port = None;
    for line in help.lines() {
        if let Some(rest) = line.split("[env: ").nth(1) {
            // `[env: NAME=value]`, or `[env: NAME]` for a hidden value.
            let name = rest.split(['=', ']']).next().unwrap().to_owned();
            if name == "PORT" {
                port = line
                    .split("[default: ")
                    .nth(1)
                    .map(|d| d.trim_end_matches(']').to_owned());
            }
            names.insert(name);
        }
    }
    assert!(
        names.len() > 3,
        "{service} --help lists its variables:\n{help}"
    );
    (names, port)
}

/// Every `*.yaml` file under `dir`, at any depth.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::with::singleton_map_recursive::deserialize(d).unwrap())
        .collect()
}

/// Keys of a compose `environment:` mapping, following `<<:` merges.
fn mapping_keys(value: &Value, out: &mut BTreeMap<String, String>) {
    if let Some(map) = value.as_mapping() {
        for (key, value) in map {
            let key = key.as_str().unwrap_or_default();
            if key == "<<" {
                mapping_keys(value, out);
            } else {
                out.insert(
                    key.to_owned(),
                    value
                        .as_str()
                        .map(str::to_owned)
                        .or_else(|| value.as_u64().map(|n| n.to_string()))
                        .unwrap_or_default(),
                );
            }
        }
    }
}

#[test]
fn compose_gives_each_service_only_variables_it_reads_and_its_own_port() {
    let compose = &yaml_documents(&root().join("docker-compose.yml"))[0];
    for service in SERVICES {
        let (names, default_port) = accepted(service);
        let mut environment = BTreeMap::new();
        mapping_keys(
            &compose["services"][service]["environment"],
            &mut environment,
        );
        assert!(
            !environment.is_empty(),
            "{service} has an environment in docker-compose.yml"
        );
        for key in environment.keys() {
            assert!(
                names.contains(key),
                "docker-compose.yml gives {service} {key}, which it does not read"
            );
        }
        if service != "whatsapp-clone" {
            assert_eq!(
                environment.get("PORT"),
                default_port.as_ref(),
                "{service} listens on its documented port"
            );
        }
    }
}

#[test]
fn kubernetes_and_render_use_the_binaries_variables() {
    let mut config_maps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut deployments = Vec::new();
    // The base, the overlays' patches and the example Secret.
    for path in yaml_files(&root().join("deploy/k8s")) {
        for document in yaml_documents(&path) {
            match document["kind"].as_str() {
                Some("ConfigMap") | Some("Secret") => {
                    let keys: Vec<String> = ["data", "stringData"]
                        .iter()
                        .filter_map(|k| document[*k].as_mapping())
                        .flat_map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_owned)))
                        .collect();
                    // An overlay's patch adds to the base's keys.
                    config_maps
                        .entry(document["metadata"]["name"].as_str().unwrap().to_owned())
                        .or_default()
                        .extend(keys);
                }
                Some("Deployment") => deployments.push(document),
                _ => {}
            }
        }
    }
    let mut checked = 0;
    let mut imported = BTreeSet::new();
    for deployment in &deployments {
        for container in deployment["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
        {
            let Some(service) = SERVICES
                .iter()
                .find(|s| container["name"].as_str() == Some(**s))
            else {
                continue;
            };
            let (names, _) = accepted(service);
            for env in container["env"].as_sequence().into_iter().flatten() {
                let name = env["name"].as_str().unwrap();
                assert!(
                    names.contains(name),
                    "deploy/k8s gives {service} {name}, which it does not read"
                );
            }
            for source in container["envFrom"].as_sequence().into_iter().flatten() {
                let map = source["configMapRef"]["name"].as_str().unwrap();
                imported.insert(map.to_owned());
                let known = &config_maps[map];
                let used: BTreeSet<&String> = known.iter().filter(|k| names.contains(*k)).collect();
                assert!(!used.is_empty(), "{service} reads something from {map}");
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked, 3,
        "webhook-gateway, processor and api-gateway have Deployments"
    );
    // Every shared setting is read by some service.
    let all: BTreeSet<String> = SERVICES.iter().flat_map(|s| accepted(s).0).collect();
    for (map, keys) in config_maps
        .iter()
        .filter(|(name, _)| imported.contains(*name))
    {
        for key in keys {
            assert!(all.contains(key), "{map} sets {key}, which no binary reads");
        }
    }

    let render = &yaml_documents(&root().join("deploy/render.yaml"))[0];
    let (names, _) = accepted("whatsapp-clone");
    for service in render["services"].as_sequence().unwrap() {
        for variable in service["envVars"].as_sequence().into_iter().flatten() {
            let key = variable["key"].as_str().unwrap();
            assert!(
                names.contains(key),
                "render.yaml sets {key}, which whatsapp-clone does not read"
            );
        }
    }
}

#[test]
fn env_example_only_holds_what_the_compose_file_uses() {
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let example = std::fs::read_to_string(root().join(".env.example")).unwrap();
    let keys: Vec<&str> = example
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    assert!(keys.len() > 5);
    for key in keys {
        assert!(
            compose.contains(&format!("${{{key}")) || compose.contains(&format!("{key}:\n")),
            ".env.example has {key}, which docker-compose.yml does not use"
        );
    }
}

/// No binary's `--help` shows a secret it was given in the environment.
#[test]
fn help_shows_no_secret_from_the_environment() {
    let secrets = [
        ("API_TOKENS", "token-in-the-environment-4f1e9d"),
        ("WHATSAPP_APP_SECRET", "app-secret-in-the-environment-7a2c"),
        (
            "WEBHOOK_VERIFY_TOKEN",
            "verify-token-in-the-environment-9b3d",
        ),
        ("MONGODB_URI", "mongodb://user:db-password-3c1a@db:27017/x"),
        ("NATS_URL", "nats://user:nats-password-8e5f@nats:4222"),
    ];
    for service in SERVICES {
        let mut invocations = vec![vec!["--help"]];
        if service == "whatsapp-clone" {
            invocations.push(vec!["serve", "--help"]);
        }
        for args in invocations {
            let output = Command::new(binary(service))
                .args(&args)
                .envs(secrets)
                .output()
                .expect("binaries are built");
            let help = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{service} {args:?}: {help}");
            for secret in [
                "token-in-the",
                "app-secret-in",
                "verify-token-in",
                "db-password",
                "nats-password",
            ] {
                assert!(!help.contains(secret), "{service} {args:?} shows {secret}");
            }
        }
    }
}
