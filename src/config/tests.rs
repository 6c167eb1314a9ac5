use super::*;

fn urls(u: &str) -> Result<Vec<BrokerUrl>, String> {
    MqttConfig {
        url: u.into(),
        ..Default::default()
    }
    .broker_urls()
}

/// One URL: exactly one broker, or the reason.
fn url(u: &str) -> Result<BrokerUrl, String> {
    let mut list = urls(u)?;
    assert_eq!(list.len(), 1, "{u}");
    Ok(list.remove(0))
}

fn tcp(host: &str, port: u16, tls: bool) -> BrokerUrl {
    BrokerUrl::Tcp {
        host: host.into(),
        port,
        tls,
    }
}

#[test]
fn broker_urls() {
    assert_eq!(url("embedded"), Ok(BrokerUrl::Embedded));
    assert_eq!(
        url("mqtt://10.0.0.2:1884"),
        Ok(BrokerUrl::Tcp {
            host: "10.0.0.2".into(),
            port: 1884,
            tls: false
        })
    );
    assert_eq!(
        url("mqtts://broker.local"),
        Ok(BrokerUrl::Tcp {
            host: "broker.local".into(),
            port: 8883,
            tls: true
        })
    );
    assert!(url("http://x:1").is_err());
    assert!(url("mqtt://host:notaport").is_err());
    assert!(url("mqtt://:1883").is_err());
    assert_eq!(url("mqtt://[::1]:1885"), Ok(tcp("::1", 1885, false)));
    // A single URL is taken as it is, as before lists: no trimming.
    assert!(url(" mqtt://a:1").is_err());
    assert!(url("embedded ").is_err());
}

/// `mqtt.url` as a comma separated list: each element by the single-URL rules, spaces
/// around the commas allowed, TLS per element; a bad element is named by its position.
#[test]
fn broker_url_lists() {
    assert_eq!(
        urls("mqtt://a:1883,mqtt://b:1884"),
        Ok(vec![tcp("a", 1883, false), tcp("b", 1884, false)])
    );
    assert_eq!(
        urls(" mqtts://a , mqtt://[fd00::2]:1999,  mqtts://10.0.0.3:8884/ "),
        Ok(vec![
            tcp("a", 8883, true),
            tcp("fd00::2", 1999, false),
            tcp("10.0.0.3", 8884, true),
        ])
    );
    let err = urls("mqtt://a:1883, mqtt://b:nope").unwrap_err();
    assert!(
        err.contains("broker 2") && err.contains("bad port `nope`"),
        "{err}"
    );
    let err = urls("http://a:1, mqtt://b").unwrap_err();
    assert!(
        err.contains("broker 1") && err.contains("`http://a:1`"),
        "{err}"
    );
    let err = urls("mqtt://a,,mqtt://b").unwrap_err();
    assert!(err.contains("broker 2") && err.contains("empty"), "{err}");
    let err = urls("mqtt://a,").unwrap_err();
    assert!(err.contains("broker 2") && err.contains("empty"), "{err}");
    let err = urls("mqtt://a:1883, embedded").unwrap_err();
    assert!(
        err.contains("broker 2") && err.contains("cannot be part of a list"),
        "{err}"
    );
    let err = urls("embedded,mqtt://a:1883").unwrap_err();
    assert!(
        err.contains("broker 1") && err.contains("embedded"),
        "{err}"
    );
    let err = urls("mqtt://a, mqtt://:1883").unwrap_err();
    assert!(
        err.contains("broker 2") && err.contains("missing host"),
        "{err}"
    );
}

/// A bad list is a config error at load, naming `mqtt.url` and the element.
#[test]
fn a_bad_broker_list_fails_the_load() {
    let load = |url: &str| -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, format!("[mqtt]\nurl = \"{url}\"\n")).unwrap();
        Config::load(Some(&file))
            .map(|(c, _)| c)
            .map_err(|e| e.to_string())
    };
    let config = load("mqtt://127.0.0.1:1, mqtts://broker.example").expect("a good list loads");
    assert_eq!(config.mqtt.broker_urls().map(|u| u.len()), Ok(2));
    let err = load("mqtt://127.0.0.1:1, embedded").unwrap_err();
    assert!(
        err.contains("mqtt.url") && err.contains("broker 2"),
        "{err}"
    );
    let err = load("mqtt://127.0.0.1:1,mqtt://b:99999").unwrap_err();
    assert!(
        err.contains("mqtt.url") && err.contains("broker 2") && err.contains("99999"),
        "{err}"
    );
}

#[test]
fn timezones() {
    use crate::zone::Zone;
    assert_eq!(
        parse_timezone("Asia/Shanghai"),
        Some(Zone::Named(chrono_tz::Asia::Shanghai))
    );
    assert_eq!(
        parse_timezone("-05:30"),
        chrono::FixedOffset::east_opt(-(5 * 3600 + 30 * 60)).map(Zone::Fixed)
    );
    assert_eq!(
        parse_timezone("+8"),
        chrono::FixedOffset::east_opt(8 * 3600).map(Zone::Fixed)
    );
    assert_eq!(parse_timezone("Mars/Olympus"), None);
    assert_eq!(parse_timezone("+25:00"), None);
}

#[test]
fn secret_debug_is_masked() {
    let s = Secret::new("hunter2");
    assert_eq!(format!("{s:?}"), "\"********\"");
    assert_eq!(s.expose(), "hunter2");
}

#[test]
fn masked_toml_hides_every_secret_key() {
    let mut c = Config::default();
    c.mqtt.password = Secret::new("mqtt-pass");
    c.bridge.command_pin = Secret::new("1234");
    let out = c.to_masked_toml();
    assert!(!out.contains("mqtt-pass"), "{out}");
    assert!(!out.contains("1234"), "{out}");
    assert!(out.contains("password = \"********\""), "{out}");
}

/// Every leaf of `value` by its dotted path (`kingxun.devices[0].key`).
fn leaves(
    value: &toml::Value,
    path: &str,
    out: &mut std::collections::BTreeMap<String, toml::Value>,
) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(v, &p, out);
            }
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, &format!("{path}[{i}]"), out);
            }
        }
        leaf => {
            out.insert(path.to_string(), leaf.clone());
        }
    }
}

/// The dotted path of every `Secret` in `value`, found by its type (set or not).
fn secret_paths<T: Serialize>(value: &T) -> Vec<String> {
    let marked = Secret::marked(|| toml::Value::try_from(value)).unwrap();
    let mut all = std::collections::BTreeMap::new();
    leaves(&marked, "", &mut all);
    all.into_iter()
        .filter(|(_, v)| v.as_str() == Some(Secret::MARKER))
        .map(|(k, _)| k)
        .collect()
}

/// A secret under a key name nothing has ever listed, at the top, in a table and in a list.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Unusual {
    zz_unusual: Secret,
    plain: String,
    unset: Secret,
    nested: UnusualNested,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct UnusualNested {
    items: Vec<UnusualItem>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct UnusualItem {
    zz_deep: Secret,
}

#[test]
fn a_secret_is_masked_by_its_type_whatever_its_key_is_called() {
    assert!(!SECRET_KEYS.contains(&"zz_unusual") && !SECRET_KEYS.contains(&"zz_deep"));
    let value = Unusual {
        zz_unusual: Secret::new("hunter2-unusual"),
        plain: "shown-as-is".into(),
        unset: Secret::default(),
        nested: UnusualNested {
            items: vec![UnusualItem {
                zz_deep: Secret::new("hunter2-deep"),
            }],
        },
    };
    let shown = masked_toml(&value);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("zz_unusual = \"********\""), "{shown}");
    assert!(shown.contains("zz_deep = \"********\""), "{shown}");
    assert!(
        shown.contains("unset = \"\""),
        "an unset secret shows as unset: {shown}"
    );
    assert!(shown.contains("plain = \"shown-as-is\""), "{shown}");
    let debug = format!("{value:?} {value:#?}");
    assert!(!debug.contains("hunter2"), "{debug}");

    // Outside `masked` (and after it) a secret serialises as its value: the config's
    // layers are built that way.
    let plain = toml::to_string(&value).unwrap();
    assert!(
        plain.contains("zz_unusual = \"hunter2-unusual\""),
        "{plain}"
    );

    // A value a secret cannot take is refused without being shown, whatever the key.
    for bad in [
        "97531.25",
        "true",
        "[\"97531-secret\"]",
        "{ pin = \"97531-secret\" }",
    ] {
        let err = figment::Figment::from(Toml::string(&format!("zz_unusual = {bad}")))
            .extract::<Unusual>()
            .unwrap_err();
        let text = describe_figment(&err);
        assert!(text.contains("`zz_unusual`"), "{bad}: {text}");
        assert!(text.contains("not shown"), "{bad}: {text}");
        assert!(
            !text.contains("97531"),
            "{bad}: the error shows the secret: {text}"
        );
    }
}

/// A config with every `Secret` it can hold set, lists included.
fn every_secret_set() -> Config {
    let toml = r#"
        [mqtt]
        password = "real-mqtt-password"
        [bridge]
        command_pin = "real-command-pin"
        http_token = "real-page-http-token"
        [xchanger]
        password = "real-xchanger-password"
        auth_code = "real-xchanger-auth-code"
        access_token = "real-xchanger-access-token"
        refresh_token = "real-xchanger-refresh-token"
        app_key = "real-xchanger-app-key"
        [iauto360]
        secure_code = "real-iauto360-secure-code"
        [kingxun]
        devices = [{ id = 1, key = "real-kingxun-device-key" }]
        [kingxun.kxsvr]
        address = "127.0.0.1:9000"
        key = "real-kingxun-kxsvr-key"
        iv = "real-kingxun-kxsvr-iv"
        [exlive]
        accounts = [{ name = "fleet", password = "real-exlive-account-password" }]
        [exlive.client]
        address = "127.0.0.1:1502"
        name = "me"
        password = "real-exlive-client-password"
    "#;
    figment::Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(toml))
        .extract()
        .unwrap_or_else(|e| panic!("{}", describe_figment(&e)))
}

#[test]
fn no_secret_of_a_full_config_shows_in_check_config_or_debug() {
    let config = every_secret_set();
    let paths = secret_paths(&config);
    let mut real = std::collections::BTreeMap::new();
    leaves(&toml::Value::try_from(&config).unwrap(), "", &mut real);
    // The config above sets every secret there is: a new `Secret` field fails here
    // until it is set above (in a list: until the list has an entry).
    let values: Vec<String> = paths
        .iter()
        .map(|p| {
            let v = real[p].as_str().unwrap_or_default().to_string();
            assert!(
                v.starts_with("real-"),
                "{p} is a secret the test does not set"
            );
            v
        })
        .collect();
    assert_eq!(values.len(), 14, "{paths:?}");

    let shown = config.to_masked_toml();
    let debug = format!("{config:?}\n{config:#?}");
    for v in &values {
        assert!(
            !shown.contains(v.as_str()),
            "check-config shows {v}:\n{shown}"
        );
        assert!(!debug.contains(v.as_str()), "Debug shows {v}:\n{debug}");
    }
    assert_eq!(
        shown.matches("\"********\"").count(),
        values.len(),
        "{shown}"
    );

    // The names kept for the add-on's schema check are exactly the `Secret` fields'.
    let names: std::collections::BTreeSet<&str> = paths
        .iter()
        .map(|p| p.rsplit('.').next().unwrap())
        .collect();
    let listed: std::collections::BTreeSet<&str> = SECRET_KEYS.iter().copied().collect();
    assert_eq!(names, listed, "SECRET_KEYS must name the Secret fields");
}

#[test]
fn layering_keeps_the_secrets_real_values() {
    let mut base = Config::default();
    base.mqtt.password = Secret::new("from-the-base");
    assert!(!base.to_masked_toml().contains("from-the-base"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "").unwrap();
    let (config, _) = Config::load_over(base, Some(&file), &[]).expect("loads");
    assert_eq!(config.mqtt.password.expose(), "from-the-base");
}

#[test]
fn environment_variables_are_named_as_figment_reads_them() {
    assert_eq!(env_key("V2M_MQTT__URLL").as_deref(), Some("mqtt.urll"));
    assert_eq!(env_key("v2m_Mqtt__Url").as_deref(), Some("mqtt.url"));
    assert_eq!(
        env_key(" V2M_KINGXUN__KXSVR__KEY ").as_deref(),
        Some("kingxun.kxsvr.key")
    );
    assert_eq!(env_key("V2M_"), None);
    assert_eq!(env_key("V2M_MQTT____URL"), None);
    assert_eq!(env_key("OTHER_MQTT__URL"), None);
    assert_eq!(env_key("V2"), None);
    // No such variable is set: the name it would have.
    assert_eq!(
        describe_env_var("kingxun.zz_never_set_probe"),
        "environment variable `V2M_KINGXUN__ZZ_NEVER_SET_PROBE`"
    );
}

/// The status page's settings are checked at load: a short token, an ingress address
/// that is none, a tile URL that is no http(s) template or could leave its attribute.
#[test]
fn the_status_page_settings_are_checked() {
    let problems = |toml: &str| -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, toml).unwrap();
        match Config::load(Some(&file)) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    assert_eq!(
        problems("[bridge]\nhttp_token = \"0123456789abcdef\"\nmap_tiles = \"\"\n"),
        ""
    );
    assert!(problems("[bridge]\nhttp_token = \"short\"\n").contains("bridge.http_token"));
    assert!(
        problems("[bridge]\ningress = true\ningress_from = \"supervisor\"\n")
            .contains("bridge.ingress_from")
    );
    assert_eq!(
        problems("[bridge]\ningress_from = \"anything while ingress is off\"\n"),
        ""
    );
    for bad in [
        "ftp://tiles.example/{z}/{x}/{y}.png",
        "https://tiles.example/{z}/{x}.png",
        "https://tiles.example/{z}/{x}/{y}.png\\\" onload=\\\"x",
        "https://tiles.example/<b>/{z}/{x}/{y}.png",
    ] {
        let got = problems(&format!("[bridge]\nmap_tiles = \"{bad}\"\n"));
        assert!(got.contains("bridge.map_tiles"), "{bad}: {got}");
    }
    assert_eq!(
        problems("[bridge]\nmap_tiles = \"https://{s}.tile.example.org/{z}/{x}/{y}.png\"\n"),
        ""
    );
}
