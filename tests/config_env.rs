//! Settings that are text keep their exact text when they come from the environment, even
//! when they look like numbers (the README's own `V2M_BRIDGE__COMMAND_PIN=2468`, the
//! add-on's numeric MQTT password): a leading zero stays, nothing exits 2, and no error
//! ever shows a secret. A problem with a value from the environment names its variable.
//! Its own binary: it sets process environment; its tests take turns (`ENV`).

use vehicle2mqtt::config::Config;

/// Held by each test while it sets process environment.
static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn env_lock() -> std::sync::MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn numeric_text_from_the_environment_stays_text() {
    let _env = env_lock();
    std::env::set_var("V2M_BRIDGE__COMMAND_PIN", "0123");
    std::env::set_var("V2M_MQTT__PASSWORD", "2468");
    std::env::set_var("V2M_MQTT__URL", "mqtt://127.0.0.1:1883");
    std::env::set_var("V2M_XCHANGER__USER_ID", "00042");
    let (config, _) = Config::load(None).expect("numeric secrets load");
    assert_eq!(config.bridge.command_pin.expose(), "0123");
    assert_eq!(config.mqtt.password.expose(), "2468");
    assert_eq!(config.upstreams.xchanger.user_id, "00042");

    // An unquoted number in a file is its text as well.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[bridge]\ncommand_pin = 97531\n").unwrap();
    std::env::remove_var("V2M_BRIDGE__COMMAND_PIN");
    let (config, _) = Config::load(Some(&file)).expect("an unquoted PIN loads");
    assert_eq!(config.bridge.command_pin.expose(), "97531");

    // A secret that cannot be used is refused without showing it.
    std::fs::write(&file, "[bridge]\ncommand_pin = [\"97531-secret\"]\n").unwrap();
    let err = Config::load(Some(&file)).unwrap_err().to_string();
    assert!(err.contains("bridge.command_pin"), "{err}");
    assert!(!err.contains("97531"), "the error shows the secret: {err}");
}

#[test]
fn a_problem_from_the_environment_names_its_variable() {
    let _env = env_lock();
    let err_with = |var: &str, value: &str| {
        std::env::set_var(var, value);
        let err = Config::load(None).map(|_| ()).unwrap_err().to_string();
        std::env::remove_var(var);
        err
    };

    // An unknown key in a section, and an unknown section.
    let err = err_with("V2M_MQTT__URLL", "mqtt://127.0.0.1:1883");
    assert!(
        err.contains("unknown key `mqtt.urll` (from environment variable `V2M_MQTT__URLL`)"),
        "{err}"
    );
    assert!(err.contains("did you mean `mqtt.url`?"), "{err}");
    let err = err_with("V2M_MQTTT__URL", "mqtt://127.0.0.1:1883");
    assert!(
        err.contains("unknown key `mqttt` (from environment variable `V2M_MQTTT__URL`)"),
        "{err}"
    );
    assert!(!err.contains("unknown source"), "{err}");
    assert!(err.contains("did you mean `mqtt`?"), "{err}");

    // A value of the wrong type, and a value validation refuses.
    let err = err_with("V2M_MQTT__QUEUE_CAPACITY", "many");
    assert!(
        err.contains(
            "`mqtt.queue_capacity` (from environment variable `V2M_MQTT__QUEUE_CAPACITY`)"
        ),
        "{err}"
    );
    let err = err_with("V2M_MQTT__QUEUE_CAPACITY", "0");
    assert!(
        err.contains(
            "invalid value for key `mqtt.queue_capacity` (from environment variable \
             `V2M_MQTT__QUEUE_CAPACITY`): must be at least 1"
        ),
        "{err}"
    );
}

/// `[kingxun.kxsvr]` was called `[kingxun.upstream]` before: a config that still says so
/// loads the same, from a file and from `V2M_KINGXUN__UPSTREAM__*` (either name over
/// either), and an all-digit `host` stays text under both names (`TEXT_KEYS`).
#[test]
fn the_old_kingxun_upstream_section_still_loads_as_kxsvr() {
    let _env = env_lock();
    let dir = tempfile::tempdir().unwrap();
    let load = |name: &str, toml: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, toml).unwrap();
        let (config, _) = Config::load(Some(&file)).unwrap_or_else(|e| panic!("{name}: {e}"));
        config
    };
    let section = |table: &str| {
        format!(
            "[kingxun]\nenabled = true\n\n[kingxun.{table}]\naddress = \"kx.example.com:10086\"\n\
             key = \"00112233445566778899aabbccddeeff\"\niv = \"ffeeddccbbaa99887766554433221100\"\n\
             heartbeat = \"30s\"\nserver_commands = [\"guard\"]\n\n\
             [[kingxun.{table}.devices]]\nid = 2001\nname = \"Fleet scooter\"\n"
        )
    };
    let new = load("new.toml", &section("kxsvr"));
    let old = load("old.toml", &section("upstream"));
    let kx = new
        .upstreams
        .kingxun
        .kxsvr
        .as_ref()
        .expect("[kingxun.kxsvr] is read");
    assert_eq!(kx.address, "kx.example.com:10086");
    assert_eq!(kx.devices[0].id, 2001);
    assert_eq!(
        toml::Value::try_from(&old).unwrap(),
        toml::Value::try_from(&new).unwrap(),
        "[kingxun.upstream] loads as [kingxun.kxsvr] does"
    );
    // The effective config (check-config) names the section by its name now.
    let shown = old.to_masked_toml();
    assert!(shown.contains("[kingxun.kxsvr]"), "{shown}");
    assert!(!shown.contains("upstream"), "{shown}");

    // From the environment, under either name, over a file that says either: all-digit
    // text stays text.
    let devices = "[kingxun]\nenabled = true\n[[kingxun.TABLE.devices]]\nid = 2001\n";
    let var = |table: &str, k: &str| format!("V2M_KINGXUN__{}__{k}", table.to_uppercase());
    for (file_table, env_table) in [
        ("upstream", "upstream"),
        ("kxsvr", "upstream"),
        ("upstream", "kxsvr"),
        ("kxsvr", "kxsvr"),
    ] {
        let case = format!("[kingxun.{file_table}] and V2M_KINGXUN__{env_table}__*");
        std::env::set_var(var(env_table, "ADDRESS"), "127.0.0.1:10086");
        std::env::set_var(var(env_table, "KEY"), "00112233445566778899001122334455");
        std::env::set_var(var(env_table, "IV"), "99887766554433221100998877665544");
        std::env::set_var(var(env_table, "HOST"), "12345");
        let config = load("env.toml", &devices.replace("TABLE", file_table));
        for k in ["ADDRESS", "KEY", "IV", "HOST"] {
            std::env::remove_var(var(env_table, k));
        }
        let kx = config
            .upstreams
            .kingxun
            .kxsvr
            .expect("the kxsvr link is configured");
        assert_eq!(kx.address, "127.0.0.1:10086", "{case}");
        assert_eq!(
            kx.key.expose(),
            "00112233445566778899001122334455",
            "{case}"
        );
        assert_eq!(kx.iv.expose(), "99887766554433221100998877665544", "{case}");
        assert_eq!(kx.host, "12345", "{case}");
        assert_eq!(kx.devices[0].id, 2001, "{case}");
    }

    // A problem with a value set under the old name names the variable that set it.
    let file = dir.path().join("env.toml");
    std::fs::write(&file, devices.replace("TABLE", "kxsvr")).unwrap();
    std::env::set_var("V2M_KINGXUN__UPSTREAM__ADDRESS", "127.0.0.1:10086");
    std::env::set_var("V2M_KINGXUN__UPSTREAM__KEY", "0011");
    std::env::set_var(
        "V2M_KINGXUN__UPSTREAM__IV",
        "99887766554433221100998877665544",
    );
    let err = Config::load(Some(&file))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    for k in ["ADDRESS", "KEY", "IV"] {
        std::env::remove_var(format!("V2M_KINGXUN__UPSTREAM__{k}"));
    }
    assert!(
        err.contains(
            "invalid value for key `kingxun.kxsvr.key` (from environment variable \
             `V2M_KINGXUN__UPSTREAM__KEY`)"
        ),
        "{err}"
    );
    assert!(!err.contains("0011"), "the error shows the secret: {err}");

    // One layer that says both names is refused.
    std::fs::write(
        &file,
        format!(
            "{}\n[kingxun.upstream]\naddress = \"a:1\"\nkey = \"\"\niv = \"\"\n",
            section("kxsvr")
        ),
    )
    .unwrap();
    let err = Config::load(Some(&file))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("duplicate field `kxsvr`"), "{err}");
}

/// Issue #26: `overspeed_kmh` in every connector section and vehicle entry; a limit out of
/// 1-400 km/h is refused naming its key.
#[test]
fn speed_limits_load_in_every_section_and_bad_ones_name_their_key() {
    let _env = env_lock();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.toml");
    let text = |kx: f64, ex: f64, vin: f64, esn: f64| {
        format!(
            r#"
[events]
overspeed_kmh = 120
[kingxun]
enabled = true
overspeed_kmh = 25
[[kingxun.devices]]
id = 1001
key = "000102030405060708090a0b0c0d0e0f"
overspeed_kmh = {kx}
[exlive]
enabled = true
overspeed_kmh = 90
vehicle_overspeed_kmh = {{ "7001" = {ex} }}
[[exlive.accounts]]
name = "fleet"
password = "pw"
[xchanger]
enabled = true
username = "u@example.com"
password = "p"
app_key = "k"
overspeed_kmh = 130
vehicle_overspeed_kmh = {{ "LB1WA5884A8008781" = {vin} }}
[iauto360]
enabled = true
open_id = "OPEN"
secure_code = "CODE"
overspeed_kmh = 110
[[iauto360.devices]]
esn = "865432100012345"
overspeed_kmh = {esn}
"#
        )
    };
    std::fs::write(&file, text(30.0, 60.0, 100.0, 80.0)).unwrap();
    let (config, _) = Config::load(Some(&file)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.upstreams.kingxun.overspeed_kmh, Some(25.0));
    assert_eq!(
        config.upstreams.kingxun.devices[0].overspeed_kmh,
        Some(30.0)
    );
    assert_eq!(config.upstreams.exlive.vehicle_overspeed_kmh["7001"], 60.0);
    assert_eq!(
        config.upstreams.iauto360.devices[0].overspeed_kmh,
        Some(80.0)
    );
    std::fs::write(&file, text(0.0, 500.0, -1.0, 401.0)).unwrap();
    let err = Config::load(Some(&file))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    for key in [
        "kingxun.devices[id=1001].overspeed_kmh",
        "exlive.vehicle_overspeed_kmh.7001",
        "xchanger.vehicle_overspeed_kmh.LB1WA5884A8008781",
        "iauto360.devices[esn=865432100012345].overspeed_kmh",
    ] {
        assert!(err.contains(key), "{key} not named: {err}");
    }
    assert!(err.contains("must be 1 to 400 km/h"), "{err}");
}

/// `[cluster]`: off without an id; an all-digit id from the environment stays text; each
/// bad value is refused with its key (the id's rule, the lease's bounds, the embedded
/// broker, which other instances cannot reach).
#[test]
fn the_cluster_section_is_checked_and_its_id_is_text() {
    let _env = env_lock();
    std::env::set_var("V2M_MQTT__URL", "mqtt://127.0.0.1:1883");
    let (config, _) = Config::load(None).expect("loads");
    assert!(config.cluster.settings().is_none(), "off by default");
    std::env::set_var("V2M_CLUSTER__INSTANCE_ID", "007");
    let (config, _) = Config::load(None).expect("an all-digit id loads");
    let settings = config.cluster.settings().expect("on");
    assert_eq!(settings.instance_id, "007");
    assert_eq!(settings.lease_ttl, std::time::Duration::from_secs(20));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let err_of = |text: &str| {
        std::fs::write(&file, text).unwrap();
        Config::load(Some(&file))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    std::env::remove_var("V2M_CLUSTER__INSTANCE_ID");
    let err = err_of("[cluster]\ninstance_id = \"b/1\"\n");
    assert!(err.contains("cluster.instance_id"), "{err}");
    let err = err_of("[cluster]\ninstance_id = \"b1\"\nlease_ttl = \"60s\"\n");
    assert!(
        err.contains("cluster.lease_ttl") && err.contains("55"),
        "{err}"
    );
    let err = err_of("[cluster]\ninstance_id = \"b1\"\nlease_ttl = \"2s\"\n");
    assert!(err.contains("cluster.lease_ttl"), "{err}");
    std::env::set_var("V2M_MQTT__URL", "embedded");
    let err = err_of("[cluster]\ninstance_id = \"b1\"\n");
    assert!(err.contains("mqtt.url") && err.contains("cluster"), "{err}");
    std::env::remove_var("V2M_MQTT__URL");
}
