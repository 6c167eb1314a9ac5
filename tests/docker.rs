//! No Docker engine runs here, so check what can be checked: the compose file parses and
//! builds the Dockerfile we ship, and the example config it mounts is a valid config.

use serde_yaml::Value;

fn file(p: &str) -> String {
    std::fs::read_to_string(format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn compose_builds_our_dockerfile_and_wires_the_broker() {
    let compose: Value = serde_yaml::from_str(&file("docker/docker-compose.yml")).unwrap();
    let s = &compose["services"];
    for name in ["mosquitto", "vehicle2mqtt", "homeassistant"] {
        assert!(s.get(name).is_some(), "service {name}");
    }
    let build = &s["vehicle2mqtt"]["build"];
    assert_eq!(build["dockerfile"], "docker/Dockerfile");
    assert!(
        std::path::Path::new(&format!("{}/docker/Dockerfile", env!("CARGO_MANIFEST_DIR"))).exists()
    );
    assert_eq!(
        s["vehicle2mqtt"]["environment"]["V2M_MQTT__URL"],
        "mqtt://mosquitto:1883"
    );
    let volumes: Vec<&str> = s["vehicle2mqtt"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(volumes
        .iter()
        .any(|v| v.ends_with(":/config/config.toml:ro")));
}

#[test]
fn dockerfile_runs_non_root_with_a_health_check() {
    let d = file("docker/Dockerfile");
    assert!(d.contains("USER 10001"), "non-root");
    assert!(d.contains("VOLUME [\"/data\"]"));
    assert!(d.contains("HEALTHCHECK") && d.contains("\"health\""));
    // Every path the build copies exists in the repository.
    for line in d
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        for src in line
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            assert!(
                std::path::Path::new(&format!("{}/{src}", env!("CARGO_MANIFEST_DIR"))).exists(),
                "COPY {src}"
            );
        }
    }
}

#[test]
fn example_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, file("docker/config.toml.example")).unwrap();
    let (config, _) =
        vehicle2mqtt::config::Config::load(Some(&path)).expect("docker/config.toml.example loads");
    assert!(config.upstreams.kingxun.enabled && config.upstreams.exlive.enabled);
}

#[test]
fn images_leave_out_the_embedded_broker_and_the_context_stays_small() {
    for f in [
        "docker/Dockerfile",
        "docker/Dockerfile.release",
        "addon/local/Dockerfile",
    ] {
        let d = file(f);
        let builds = d.contains("cargo build");
        assert!(
            !builds || d.contains("--no-default-features"),
            "{f} builds the embedded broker in"
        );
        assert!(
            !d.contains("EXPOSE") || !d.contains("1883"),
            "{f} exposes a broker port"
        );
    }
    let ignore = file(".dockerignore");
    for entry in ["target/", ".git/", "data/"] {
        assert!(
            ignore.lines().any(|l| l == entry),
            ".dockerignore lacks {entry}"
        );
    }
}
