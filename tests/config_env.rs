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
