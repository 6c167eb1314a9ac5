//! The Home Assistant add-on: its options must be real bridge config keys, its schema and
//! options must agree, secrets must be password fields, and its version must be ours.

use serde_yaml::Value;
use vehicle2mqtt::config::{Config, SECRET_KEYS};

fn addon(file: &str) -> Value {
    let path = format!("{}/addon/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Options and schema must have the same keys at every level; list schemas describe
/// their items.
fn agree(options: &Value, schema: &Value, path: &str) {
    match (options, schema) {
        (Value::Mapping(o), Value::Mapping(s)) => {
            for (k, v) in o {
                let key = k.as_str().unwrap();
                let sv = s
                    .get(k)
                    .unwrap_or_else(|| panic!("option {path}{key} has no schema"));
                agree(v, sv, &format!("{path}{key}."));
            }
            for (k, sv) in s {
                let key = k.as_str().unwrap();
                let optional = sv.as_str().is_some_and(|t| t.ends_with('?'));
                assert!(
                    optional || o.contains_key(k),
                    "schema {path}{key} has no default in options"
                );
            }
        }
        (Value::Sequence(items), Value::Sequence(item_schema)) => {
            assert_eq!(
                item_schema.len(),
                1,
                "{path}: a list schema describes one item"
            );
            for item in items {
                agree(item, &item_schema[0], path);
            }
        }
        (Value::Bool(_), Value::String(t)) => assert!(t.starts_with("bool"), "{path}: {t}"),
        (Value::Number(_), Value::String(t)) => assert!(
            t.starts_with("int") || t.starts_with("float"),
            "{path}: {t}"
        ),
        (Value::String(_), Value::String(t)) => {
            assert!(
                t.starts_with("str") || t.starts_with("password") || t.starts_with("list("),
                "{path}: {t}"
            )
        }
        (o, s) => panic!("{path}: option {o:?} does not match schema {s:?}"),
    }
}

fn secrets_are_passwords(schema: &Value, path: &str) {
    match schema {
        Value::Mapping(m) => {
            for (k, v) in m {
                let key = k.as_str().unwrap();
                if let Value::String(t) = v {
                    if SECRET_KEYS.contains(&key) {
                        assert!(
                            t.starts_with("password"),
                            "{path}{key} is a secret but its schema is {t}"
                        );
                    }
                }
                secrets_are_passwords(v, &format!("{path}{key}."));
            }
        }
        Value::Sequence(items) => items.iter().for_each(|i| secrets_are_passwords(i, path)),
        _ => {}
    }
}

#[test]
fn config_yaml_is_complete_and_consistent() {
    let c = addon("config.yaml");
    assert_eq!(c["slug"], "vehicle2mqtt");
    assert_eq!(
        c["version"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "add-on version must match Cargo.toml"
    );
    let arch: Vec<&str> = c["arch"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(arch.contains(&"aarch64") && arch.contains(&"amd64"));
    assert!(c["services"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|s| s == "mqtt:need"));
    assert_eq!(
        c["init"], false,
        "the bridge is PID 1 and handles SIGTERM itself"
    );
    // Prebuilt images, named as the release workflow pushes them.
    assert_eq!(c["image"], "ghcr.io/vehicle2mqtt/{arch}-vehicle2mqtt");
    for port in ["10086/tcp", "1502/tcp"] {
        assert!(c["ports"].get(port).is_some(), "port {port}");
        assert!(
            c["ports_description"].get(port).is_some(),
            "description of {port}"
        );
    }
    agree(&c["options"], &c["schema"], "");
    secrets_are_passwords(&c["schema"], "");
}

/// The status page in the sidebar: ingress on, proxied to the port `vehicle2mqtt addon`
/// serves the page on, with a panel icon and title.
#[test]
fn the_status_page_is_the_addon_s_panel() {
    let c = addon("config.yaml");
    assert_eq!(c["ingress"], true);
    let mut bridge = vehicle2mqtt::config::BridgeConfig::default();
    vehicle2mqtt::status_page::addon_page(&mut bridge);
    assert!(bridge.ingress);
    let listen: std::net::SocketAddr = bridge.http_listen.parse().unwrap();
    assert!(
        listen.ip().is_unspecified(),
        "the Supervisor's proxy reaches the add-on over its network: {listen}"
    );
    assert_eq!(c["ingress_port"].as_u64(), Some(u64::from(listen.port())));
    assert!(c["panel_icon"]
        .as_str()
        .is_some_and(|i| i.starts_with("mdi:")));
    assert!(c["panel_title"].as_str().is_some_and(|t| !t.is_empty()));
    // And the defaults' ingress_from is the Supervisor's (the add-on documentation's),
    // ingress off but where the add-on turns it on.
    assert_eq!(bridge.ingress_from, "172.30.32.2");
    assert!(!vehicle2mqtt::config::BridgeConfig::default().ingress);
    // An address of the user's own is kept.
    let mut own = vehicle2mqtt::config::BridgeConfig {
        http_listen: "0.0.0.0:9090".into(),
        ..Default::default()
    };
    vehicle2mqtt::status_page::addon_page(&mut own);
    assert_eq!(
        (own.http_listen.as_str(), own.ingress),
        ("0.0.0.0:9090", true)
    );
}

#[test]
fn options_are_real_bridge_config_keys() {
    let c = addon("config.yaml");
    // The bridge reads /data/options.json directly; unknown keys are errors there.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("options.json");
    std::fs::write(&path, serde_json::to_string(&c["options"]).unwrap()).unwrap();
    let (config, _) = Config::load(Some(&path)).expect("add-on defaults load as a bridge config");
    assert_eq!(config.mqtt.base_topic, "vehicle2mqtt");
    // A filled-in example, as a user would save it, loads too.
    let filled = serde_json::json!({
        "bridge": {"command_pin": "2468", "command_timeout": "45s", "stale_after": "1h", "log_level": "debug"},
        "mqtt": {"base_topic": "cars", "discovery_prefix": "homeassistant", "per_field_topics": true},
        "kingxun": {"enabled": true, "listen": "0.0.0.0:10086", "devices": [{"id": 1001, "key": "00112233445566778899aabbccddeeff", "name": "Scooter"}]},
        "exlive": {"enabled": true, "listen": "0.0.0.0:1502", "accounts": [{"name": "fleet", "password": "pw"}], "commands": [{"name": "locate", "data": "WHERE#"}]},
        "xchanger": {"enabled": true, "api": "v2", "username": "me@example.com", "password": "pw", "auth_code": "", "app_key": "k",
            "vins": ["L6T7722E0LN000001"], "poll_interval": "5m", "poll_interval_active": "1m", "unlock_window_min": 2, "iccid": ""},
        "iauto360": {"enabled": true, "open_id": "OPEN123", "secure_code": "s", "devices": [{"esn": "865432100012345", "name": "Car"}],
            "poll_interval": "5m", "poll_interval_active": "1m", "detail_interval": "1h", "push_listen": "0.0.0.0:8089"}
    });
    std::fs::write(&path, filled.to_string()).unwrap();
    let (config, _) = Config::load(Some(&path)).expect("a filled-in add-on config loads");
    assert!(config.upstreams.kingxun.enabled && config.upstreams.exlive.enabled);
    assert!(config.upstreams.xchanger.enabled && config.upstreams.iauto360.enabled);
    assert_eq!(config.upstreams.xchanger.unlock_window_min, 2);
    assert_eq!(
        config.upstreams.iauto360.push_listen.map(|a| a.port()),
        Some(8089)
    );
    assert_eq!(config.bridge.command_pin.expose(), "2468");
}

#[test]
fn translations_and_files_exist() {
    let t = addon("translations/en.yaml");
    let c = addon("config.yaml");
    for (k, _) in c["options"].as_mapping().unwrap() {
        assert!(
            t["configuration"].get(k).is_some(),
            "no translation for option {k:?}"
        );
    }
    for f in [
        "local/Dockerfile",
        "make-local.sh",
        "DOCS.md",
        "CHANGELOG.md",
        "icon.png",
        "logo.png",
    ] {
        assert!(
            std::path::Path::new(&format!("{}/addon/{f}", env!("CARGO_MANIFEST_DIR"))).exists(),
            "addon/{f}"
        );
    }

    let repo: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{}/repository.yaml", env!("CARGO_MANIFEST_DIR")))
            .unwrap(),
    )
    .unwrap();
    assert!(repo["name"].as_str().is_some());
}

/// The release workflow builds both architectures the add-on declares and pushes the
/// images `image:` names; the runtime Dockerfile is FROM scratch with both targets.
#[test]
fn release_workflow_builds_what_the_addon_pulls() {
    let root = env!("CARGO_MANIFEST_DIR");
    let wf: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{root}/.github/workflows/release.yml")).unwrap(),
    )
    .expect("the workflow parses");
    let include = wf["jobs"]["binary"]["strategy"]["matrix"]["include"]
        .as_sequence()
        .unwrap();
    let arches: Vec<&str> = include.iter().filter_map(|i| i["arch"].as_str()).collect();
    assert_eq!(arches, ["amd64", "aarch64"]);
    for i in include {
        let target = i["target"].as_str().unwrap();
        assert!(target.ends_with("-unknown-linux-musl"), "static: {target}");
    }
    let c = addon("config.yaml");
    let declared: Vec<&str> = c["arch"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for a in &declared {
        assert!(arches.contains(a), "no image built for {a}");
    }
    let steps = serde_yaml::to_string(&wf["jobs"]["images"]["steps"]).unwrap();
    assert!(
        steps.contains("$REGISTRY/$arch-vehicle2mqtt:$version"),
        "{steps}"
    );
    assert!(steps.contains("--target addon") && steps.contains("docker/Dockerfile.release"));
    assert!(
        wf["env"].is_null()
            && wf["jobs"]["images"]["env"]["REGISTRY"]
                .as_str()
                .unwrap()
                .starts_with("ghcr.io/")
    );
    let dockerfile = std::fs::read_to_string(format!("{root}/docker/Dockerfile.release")).unwrap();
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms, ["FROM scratch AS bridge", "FROM bridge AS addon"]);
    assert!(dockerfile.contains("CMD [\"addon\"]"));
}

/// `addon/make-local.sh` lays out an add-on that the Supervisor builds from this clone:
/// no `image:`, and every file its Dockerfile copies is there.
#[test]
fn the_local_addon_builds_from_source() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dest = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg(format!("{root}/addon/make-local.sh"))
        .arg(dest.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dest.path().join("config.yaml")).unwrap())
            .unwrap();
    assert!(
        c.get("image").is_none(),
        "a local add-on must build, not pull"
    );
    assert_eq!(c["slug"], "vehicle2mqtt_local");
    assert_eq!(c["version"], env!("CARGO_PKG_VERSION"));
    let dockerfile = std::fs::read_to_string(dest.path().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("--no-default-features"));
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let src = line.split_whitespace().nth(1).unwrap();
        assert!(dest.path().join(src).exists(), "COPY {src}");
    }
    for f in [
        "source/Cargo.toml",
        "source/Cargo.lock",
        "source/src/main.rs",
        "translations/en.yaml",
    ] {
        assert!(dest.path().join(f).exists(), "{f}");
    }
}
