//! config.example.toml is the configuration reference: it must load, and it must show
//! every key the bridge accepts (so a new key cannot ship undocumented).

use std::collections::BTreeSet;

use vehicle2mqtt::config::Config;

fn keys(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(t) = value {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(_) => keys(v, &path, out),
                _ => {
                    out.insert(path);
                }
            }
        }
    }
}

fn example_text() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml")).unwrap()
}

#[test]
fn example_loads_and_matches_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let (config, _) = Config::load(Some(&path)).expect("config.example.toml must be valid");
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    assert_eq!(
        toml::Value::try_from(&config).unwrap(),
        defaults,
        "the example shows the defaults"
    );
}

#[test]
fn example_documents_every_key() {
    let mut wanted = BTreeSet::new();
    keys(
        &toml::Value::try_from(Config::default()).unwrap(),
        "",
        &mut wanted,
    );
    // Optional sections and array entries have no default; they appear commented out.
    for optional in [
        "mqtt.ca_file",
        "events.overspeed_kmh",
        "events.inactive_after",
        "events.low_battery_percent",
        "zones.name",
        "zones.latitude",
        "zones.longitude",
        "zones.radius_m",
        "zones.polygon",
        "exlive.accounts.name",
        "exlive.accounts.password",
        "exlive.commands.name",
        "exlive.commands.data",
        "exlive.client.address",
        "exlive.client.name",
        "exlive.client.password",
        "exlive.client.heartbeat",
        "iauto360.plan",
        "iauto360.poll_interval_active",
        "xchanger.poll_interval_active",
        "iauto360.push_listen",
        "iauto360.devices.esn",
        "iauto360.devices.name",
        "kingxun.devices.id",
        "kingxun.devices.key",
        "kingxun.devices.name",
        "kingxun.kxsvr.address",
        "kingxun.kxsvr.key",
        "kingxun.kxsvr.iv",
        "kingxun.kxsvr.host",
        "kingxun.kxsvr.heartbeat",
        "kingxun.kxsvr.devices.id",
        "kingxun.kxsvr.devices.devtype",
        "kingxun.kxsvr.devices.name",
    ] {
        wanted.insert(optional.to_string());
    }
    let text = example_text();
    // Which table each (possibly commented) `key = value` line belongs to.
    let mut table = String::new();
    let mut documented = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(header) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            table = header.to_string();
        } else if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = header.to_string();
        } else if let Some((key, _)) = line.split_once(" = ") {
            documented.insert(format!("{table}.{}", key.trim()));
        }
    }
    let missing: Vec<_> = wanted.difference(&documented).collect();
    assert!(missing.is_empty(), "config.example.toml lacks {missing:?}");
}
