//! Settings that are text keep their exact text when they come from the environment, even
//! when they look like numbers (the README's own `V2M_BRIDGE__COMMAND_PIN=2468`, the
//! add-on's numeric MQTT password): a leading zero stays, nothing exits 2, and no error
//! ever shows a secret. One test in its own binary: it sets process environment.

use vehicle2mqtt::config::Config;

#[test]
fn numeric_text_from_the_environment_stays_text() {
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
