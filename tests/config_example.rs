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
    let text = example_text();
    // Optional keys (no default) appear commented out: accept `# key =` too.
    let uncommented: String = text
        .lines()
        .map(|l| {
            l.trim_start()
                .strip_prefix("# ")
                .filter(|r| r.contains(" = "))
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut documented = BTreeSet::new();
    keys(&toml::from_str(&uncommented).unwrap(), "", &mut documented);
    let missing: Vec<_> = wanted.difference(&documented).collect();
    assert!(missing.is_empty(), "config.example.toml lacks {missing:?}");
    assert!(
        documented.contains("mqtt.ca_file"),
        "the optional mqtt.ca_file is not documented"
    );
}
