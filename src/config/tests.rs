use super::*;

fn url(u: &str) -> Result<BrokerUrl, String> {
    MqttConfig {
        url: u.into(),
        ..Default::default()
    }
    .broker_url()
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
