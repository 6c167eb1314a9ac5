//! The status page over HTTP, against the bridge in this process and a real mosquitto:
//! who may act (token login, CSRF, ingress address), what it refuses (oversized bodies,
//! a 17th live stream), that an action is the MQTT command (one result on
//! `command/result`), that names are escaped and no secret is on any page.

mod common;

use std::time::{Duration, Instant};

use common::{Mosquitto, Probe, RunningBridge};
use vehicle2mqtt::config::{Config, Secret};
use vehicle2mqtt::connector::Update;
use vehicle2mqtt::model::{
    Capability, CommandProgress, Field, Position, VehicleId, VehicleInfo, VehicleState,
};

const T: Duration = Duration::from_secs(10);
const TOKEN: &str = "page-token-0123456789";

fn vehicle(id: &str, name: &str) -> VehicleInfo {
    VehicleInfo {
        id: VehicleId::new(id).unwrap(),
        name: name.into(),
        manufacturer: "kingxun".into(),
        model: "E-motor".into(),
        reported_model: None,
        sw_version: None,
        custom_name: false,
        serial_number: None,
        capabilities: vec![Capability::Lock].into(),
        event_types: vec![].into(),
    }
}

fn state(lock: &str) -> VehicleState {
    let mut s = VehicleState {
        position: Position::new(31.2304, 121.4737),
        ..Default::default()
    };
    s.set(Field::BatteryLevel, 87i64).set(Field::Lock, lock);
    s
}

/// A bridge with the page on a free port, one hand-driven connector.
struct Setup {
    bridge: RunningBridge,
    url: String,
    base: String,
    _dir: tempfile::TempDir,
}

async fn start(broker: &Mosquitto, edit: impl FnOnce(&mut Config)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&broker.url(), dir.path());
    let port = common::free_port();
    config.bridge.http_listen = format!("127.0.0.1:{port}");
    edit(&mut config);
    let base = config.mqtt.base_topic.clone();
    let bridge = RunningBridge::start(config).await;
    assert!(
        common::wait_port_async(port, T).await,
        "the page never listened"
    );
    Setup {
        bridge,
        url: format!("http://127.0.0.1:{port}/"),
        base,
        _dir: dir,
    }
}

impl Setup {
    async fn announce(&self, info: VehicleInfo, s: VehicleState) {
        let id = info.id.clone();
        let updates = &self.bridge.ctx.updates;
        updates.send(Update::Vehicle(info)).await.unwrap();
        updates
            .send(Update::State {
                vehicle: id,
                state: s,
                replace: true,
            })
            .await
            .unwrap();
    }
}

/// `application/x-www-form-urlencoded`, as a browser's form sends it.
trait FormBody {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self {
        let enc = |t: &str| {
            percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let body: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body.join("&"))
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn text(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// The page's body once `ready` holds (the hub shows a report a moment after it came).
async fn page_when(
    c: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    ready: impl Fn(&str) -> bool,
) -> String {
    let end = Instant::now() + T;
    loop {
        let mut req = c.get(url);
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        let (status, body) = text(req.send().await.unwrap()).await;
        if status == 200 && ready(&body) {
            return body;
        }
        assert!(Instant::now() < end, "the page never showed it:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs in; the session cookie (`name=value`) and the Set-Cookie line.
async fn log_in(c: &reqwest::Client, url: &str, token: &str) -> (u16, Option<(String, String)>) {
    let r = c
        .post(format!("{url}login"))
        .form_body(&[("token", token)])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let set = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let pair = set.map(|s| (s.split(';').next().unwrap_or_default().to_string(), s));
    (status, pair)
}

/// The CSRF token in a page's action form.
fn csrf(body: &str) -> Option<String> {
    let at = body.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(body[at..].split('"').next()?.to_string())
}

#[tokio::test]
async fn an_action_with_the_token_is_the_mqtt_command_and_without_it_is_refused() {
    let broker = Mosquitto::start();
    let mut s = start(&broker, |c| c.bridge.http_token = Secret::new(TOKEN)).await;
    let probe = Probe::connect(broker.port, &[&format!("{}/#", s.base)]).await;
    s.announce(vehicle("kx1001", "Blue scooter"), state("LOCKED"))
        .await;
    let c = client();
    let anonymous = page_when(&c, &s.url, None, |b| b.contains("Blue scooter")).await;
    assert!(
        anonymous.contains("<a href=\"login\">Log in</a>"),
        "{anonymous}"
    );
    assert!(
        csrf(&anonymous).is_none(),
        "a read-only page offers no action"
    );

    // Without a session: refused, and nothing reaches the connector.
    let (status, _) = text(
        c.post(format!("{}action", s.url))
            .form_body(&[("do", "unlock:kx1001"), ("csrf", "guess")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);

    let (status, cookie) = log_in(&c, &s.url, TOKEN).await;
    assert_eq!(status, 303);
    let (cookie, set_cookie) = cookie.expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            set_cookie.contains(attribute),
            "{set_cookie} lacks {attribute}"
        );
    }
    assert!(!set_cookie.contains(TOKEN));
    let body = page_when(&c, &s.url, Some(&cookie), |b| {
        b.contains("value=\"unlock:kx1001\"")
    })
    .await;
    let token = csrf(&body).expect("a CSRF token in the logged-in page");

    // A session without the CSRF token, or with a wrong one: refused.
    for form in [
        vec![("do", "unlock:kx1001")],
        vec![("do", "unlock:kx1001"), ("csrf", "0000")],
    ] {
        let (status, why) = text(
            c.post(format!("{}action", s.url))
                .header("cookie", &cookie)
                .form_body(&form)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, why.trim()), (403, "CSRF token missing or wrong"));
    }
    assert!(
        s.bridge.ctx.commands.try_recv().is_err(),
        "a refused action reached the connector"
    );

    let r = c
        .post(format!("{}action", s.url))
        .header("cookie", &cookie)
        .form_body(&[("do", "unlock:kx1001"), ("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let id = location
        .strip_prefix("./?sent=")
        .and_then(|l| l.strip_suffix("#events"))
        .expect("redirect to the page with the command id")
        .to_string();
    let req = tokio::time::timeout(T, s.bridge.ctx.commands.recv())
        .await
        .expect("the command reached the connector")
        .unwrap();
    assert_eq!(
        (req.vehicle.as_str(), req.id.as_str()),
        ("kx1001", id.as_str())
    );
    assert_eq!(req.command.name(), "unlock");
    req.progress.send(CommandProgress::Succeeded).await.unwrap();
    let result_topic = format!("{}/kx1001/command/result", s.base);
    let result = probe
        .wait_for("the unlock's result", T, |m| {
            m.topic == result_topic && m.json()["id"] == id
        })
        .await
        .json();
    assert_eq!(result["status"], "succeeded", "{result}");
    // The page shows the result too (its events and the vehicle's last command).
    page_when(&c, &s.url, Some(&cookie), |b| {
        b.contains("unlock: succeeded")
    })
    .await;
    let results = probe
        .messages()
        .into_iter()
        .filter(|m| m.topic == result_topic && m.json()["id"] == id)
        .count();
    assert_eq!(results, 1, "one result per command");
    s.bridge.stop().await;
}

#[tokio::test]
async fn live_streams_are_capped_bodies_bounded_wrong_tokens_slowed_and_counted() {
    let broker = Mosquitto::start();
    let s = start(&broker, |c| c.bridge.http_token = Secret::new(TOKEN)).await;
    let c = client();
    let mut open = Vec::new();
    for _ in 0..16 {
        let r = c.get(format!("{}live", s.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        open.push(r);
    }
    let r = c.get(format!("{}live", s.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503, "the 17th live stream");
    // One closed: a place is free again (once the server has seen it go).
    drop(open.pop());
    let end = Instant::now() + T;
    loop {
        let r = c.get(format!("{}live", s.url)).send().await.unwrap();
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < end,
            "a closed live stream never freed its place"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Fleet pages, each a pass of the hub over the fleet, come at a bounded rate: of 30
    // asked at once, some are told to come back (20 at once, 10 a second).
    // A client that keeps no idle connection (each would hold one of the page's 64), from
    // another loopback address (this one holds 16 live streams of its 32 places).
    let once = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .local_address(std::net::IpAddr::from([127, 0, 0, 3]))
        .build()
        .unwrap();
    let asks = (0..30).map(|_| {
        let (c, url) = (once.clone(), s.url.clone());
        async move { c.get(url).send().await.unwrap() }
    });
    let answers = futures_util::future::join_all(asks).await;
    let busy: Vec<_> = answers
        .iter()
        .filter(|r| r.status().as_u16() == 503)
        .collect();
    assert!(
        !busy.is_empty() && busy.len() < 30,
        "{} of 30 refused",
        busy.len()
    );
    assert!(busy.iter().all(|r| r.headers()["retry-after"] == "1"));

    // An oversized form is refused unread.
    let big = "x".repeat(64 * 1024);
    let r = c
        .post(format!("{}login", s.url))
        .form_body(&[("token", big.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    // Wrong tokens: refused, each after a longer wait (0.25 s, then 0.5 s: the throttle's
    // floor, which no machine makes shorter), counted in /metrics; the right one still works.
    let (status, _) = log_in(&c, &s.url, "wrong-token-000000000").await;
    assert_eq!(status, 401);
    let (status, _) = log_in(&c, &s.url, "wrong-token-000000001").await;
    assert_eq!(status, 401);
    let began = Instant::now();
    let (status, cookie) = log_in(&c, &s.url, TOKEN).await;
    assert!(
        began.elapsed() >= Duration::from_millis(500),
        "the third try after two wrong ones waited {:?}",
        began.elapsed()
    );
    assert_eq!(status, 303);
    assert!(cookie.is_some());
    // The snapshot behind /metrics is renewed every second. The counter is the
    // process's, and only this test gives wrong tokens.
    let end = Instant::now() + T;
    loop {
        let (_, metrics) = text(c.get(format!("{}metrics", s.url)).send().await.unwrap()).await;
        if metrics
            .lines()
            .any(|l| l == "vehicle2mqtt_page_login_failures_total 2")
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "two wrong tokens not counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(open);
    s.bridge.stop().await;
}

#[tokio::test]
async fn ingress_acts_only_from_the_trusted_address_and_only_when_on() {
    let broker = Mosquitto::start();
    // Ingress on, the proxy at 127.0.0.2: this test's client can be either address.
    let s = start(&broker, |c| {
        c.bridge.ingress = true;
        c.bridge.ingress_from = "127.0.0.2".into();
    })
    .await;
    s.announce(vehicle("kx1001", "Blue scooter"), state("LOCKED"))
        .await;
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let (proxy, other) = (from([127, 0, 0, 2]), from([127, 0, 0, 1]));
    let url = s.url.clone();
    let through = page_when(&proxy, &url, None, |b| b.contains("Blue scooter")).await;
    assert!(
        through.contains("Actions enabled (Home Assistant ingress)"),
        "{through}"
    );
    let token = csrf(&through).expect("a CSRF token through ingress");
    let direct = page_when(&other, &url, None, |b| b.contains("Blue scooter")).await;
    assert!(csrf(&direct).is_none(), "another address is read-only");
    assert!(
        direct.contains("open this page from the add-on"),
        "{direct}"
    );
    let act = |c: reqwest::Client, csrf: String| {
        let url = url.clone();
        async move {
            c.post(format!("{url}action"))
                .form_body(&[("do", "refresh:kx1001"), ("csrf", csrf.as_str())])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        act(other.clone(), token.clone()).await,
        403,
        "the proxy's CSRF token from elsewhere"
    );
    assert_eq!(
        act(proxy.clone(), String::new()).await,
        403,
        "the proxy without a CSRF token"
    );
    assert_eq!(act(proxy, token).await, 303);
    s.bridge.stop().await;

    // Ingress off: the same address is nobody special.
    let s = start(&broker, |c| c.bridge.ingress_from = "127.0.0.2".into()).await;
    let body = page_when(&from([127, 0, 0, 2]), &s.url, None, |_| true).await;
    assert!(csrf(&body).is_none(), "ingress_from without ingress = true");
    s.bridge.stop().await;
}

#[tokio::test]
async fn names_are_text_and_no_secret_is_on_any_page() {
    let broker = Mosquitto::start();
    let pin = "pin-marker-4711";
    let s = start(&broker, |c| {
        c.bridge.http_token = Secret::new(TOKEN);
        c.bridge.command_pin = Secret::new(pin);
        c.mqtt.username = "user-marker".into();
        c.mqtt.password = Secret::new("password-marker-0815");
    })
    .await;
    let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    s.announce(vehicle("kx666", hostile), state("<b>LOCKED</b>"))
        .await;
    let c = client();
    let (_, cookie) = log_in(&c, &s.url, TOKEN).await;
    let (cookie, _) = cookie.expect("logged in");
    let body = page_when(&c, &s.url, Some(&cookie), |b| b.contains("kx666")).await;
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"),
        "{body}"
    );
    assert!(
        !body.contains("<script>alert") && !body.contains("<img") && !body.contains("<b>LOCKED")
    );

    // The map's positions: every vehicle with one, the name as a JSON string (the page's
    // script makes it a text node).
    let (status, json) = text(
        c.get(format!("{}positions.json", s.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    let points: Vec<(String, String, f64, f64)> = serde_json::from_str(&json).unwrap();
    assert_eq!(
        points,
        vec![("kx666".to_string(), hostile.to_string(), 31.2304, 121.4737)]
    );
    let script = text(
        c.get(format!("{}assets/status.js", s.url))
            .send()
            .await
            .unwrap(),
    )
    .await
    .1;
    assert!(
        script.contains("label.textContent = r.name"),
        "tooltips are text"
    );

    let mut bodies = vec![body, json];
    for path in [
        "",
        "?q=kx&sort=battery&desc=true&page=9",
        "positions.json",
        "login",
        "metrics",
        "healthz",
        "assets/status.js",
    ] {
        for cookie in [None, Some(cookie.as_str())] {
            let mut req = c.get(format!("{}{path}", s.url));
            if let Some(cookie) = cookie {
                req = req.header("cookie", cookie);
            }
            bodies.push(text(req.send().await.unwrap()).await.1);
        }
    }
    // The live stream's first status event.
    let mut live = c
        .get(format!("{}live?ids=kx666", s.url))
        .send()
        .await
        .unwrap();
    let chunk = tokio::time::timeout(T, live.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    bodies.push(String::from_utf8_lossy(&chunk).to_string());
    for body in &bodies {
        for secret in [TOKEN, pin, "password-marker-0815"] {
            assert!(!body.contains(secret), "`{secret}` on a page:\n{body}");
        }
    }
    s.bridge.stop().await;
}

#[tokio::test]
async fn an_unlock_from_the_page_needs_the_pin_like_one_over_mqtt() {
    let broker = Mosquitto::start();
    let mut s = start(&broker, |c| {
        c.bridge.http_token = Secret::new(TOKEN);
        c.bridge.command_pin = Secret::new("2468");
    })
    .await;
    let probe = Probe::connect(broker.port, &[&format!("{}/#", s.base)]).await;
    s.announce(vehicle("kx1001", "Blue scooter"), state("LOCKED"))
        .await;
    let c = client();
    let (_, cookie) = log_in(&c, &s.url, TOKEN).await;
    let (cookie, _) = cookie.expect("logged in");
    let body = page_when(&c, &s.url, Some(&cookie), |b| {
        b.contains("value=\"unlock:kx1001\"")
    })
    .await;
    let token = csrf(&body).expect("a CSRF token");
    let unlock = |pin: &'static str| {
        let (c, url, cookie, token) = (c.clone(), s.url.clone(), cookie.clone(), token.clone());
        async move {
            let r = c
                .post(format!("{url}action"))
                .header("cookie", cookie)
                .form_body(&[
                    ("do", "unlock:kx1001"),
                    ("csrf", token.as_str()),
                    ("pin", pin),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 303);
            let location = r.headers()["location"].to_str().unwrap().to_string();
            location["./?sent=".len()..location.len() - "#events".len()].to_string()
        }
    };
    let result_topic = format!("{}/kx1001/command/result", s.base);
    let wrong = unlock("1111").await;
    let r = probe
        .wait_for("the wrong PIN's result", T, |m| {
            m.topic == result_topic && m.json()["id"] == wrong
        })
        .await
        .json();
    assert_eq!(r["status"], "rejected", "{r}");
    assert!(
        s.bridge.ctx.commands.try_recv().is_err(),
        "a wrong PIN reached the connector"
    );
    let right = unlock("2468").await;
    let req = tokio::time::timeout(T, s.bridge.ctx.commands.recv())
        .await
        .expect("the unlock with the PIN reached the connector")
        .unwrap();
    assert_eq!(req.id, right);
    req.progress.send(CommandProgress::Succeeded).await.unwrap();
    let r = probe
        .wait_for("the right PIN's result", T, |m| {
            m.topic == result_topic && m.json()["id"] == right
        })
        .await
        .json();
    assert_eq!(r["status"], "succeeded", "{r}");
    s.bridge.stop().await;
}

/// The real binary's demo with a secret of every kind set to a marker (the EXLIVE
/// account's password no longer the one its tracker sends, so a refused login shows
/// under Why not): no page, endpoint or live event carries any of them, nor the kingxun
/// device keys, nor the embedded broker's password.
#[tokio::test]
async fn no_secret_of_the_demo_is_on_any_page() {
    let dir = tempfile::tempdir().unwrap();
    let devices = std::process::Command::new(common::BIN)
        .args([
            "simulate",
            "kingxun",
            "--devices",
            "2",
            "--key-seed",
            "2024",
            "--first-id",
            "1001",
            "--print-config",
        ])
        .output()
        .unwrap();
    let devices = String::from_utf8(devices.stdout).unwrap();
    let mut secrets: Vec<String> = devices
        .lines()
        .filter_map(|l| l.strip_prefix("key = \""))
        .map(|k| k.trim_end_matches('"').to_string())
        .collect();
    assert_eq!(secrets.len(), 2, "{devices}");
    let markers = [
        ("bridge", "command_pin", "pin-marker-8642"),
        ("bridge", "http_token", "http-token-marker-0123456789"),
        ("xchanger", "password", "xchanger-password-marker"),
        ("xchanger", "app_key", "xchanger-app-key-marker"),
        ("iauto360", "secure_code", "iauto360-secure-code-marker"),
    ];
    let mut file = String::new();
    for section in ["bridge", "xchanger", "iauto360"] {
        file += &format!("[{section}]\n");
        for (_, key, value) in markers.iter().filter(|(s, _, _)| *s == section) {
            file += &format!("{key} = \"{value}\"\n");
        }
    }
    file += "[exlive]\naccounts = [{ name = \"demo\", password = \"exlive-password-marker\" }]\n";
    file += &devices;
    secrets.extend(markers.iter().map(|(_, _, v)| v.to_string()));
    secrets.push("exlive-password-marker".into());
    let config = dir.path().join("secrets.toml");
    std::fs::write(&config, file).unwrap();

    let ports: Vec<u16> = (0..7).map(|_| common::free_port()).collect();
    let mut args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "demo".into(),
    ];
    for (flag, port) in ["mqtt", "kingxun", "exlive", "xchanger", "iauto360", "push"]
        .iter()
        .zip(&ports)
    {
        args.extend([format!("--{flag}-port"), port.to_string()]);
    }
    let child = std::process::Command::new(common::BIN)
        .args(&args)
        .current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .env("V2M_BRIDGE__HTTP_LISTEN", format!("127.0.0.1:{}", ports[6]))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = common::KillOnDrop(child);
    let state = dir
        .path()
        .join(format!("vehicle2mqtt-demo-{}", child.0.id()));
    let (_, broker_password) = common::embedded_login(&state);
    secrets.push(broker_password);
    let url = format!("http://127.0.0.1:{}/", ports[6]);
    assert!(
        common::wait_port_async(ports[6], T).await,
        "the page never listened"
    );
    let c = client();
    page_when(&c, &url, None, |b| {
        b.contains("kx1001") && b.contains("exlive_login_refused")
    })
    .await;
    let (_, cookie) = log_in(&c, &url, "http-token-marker-0123456789").await;
    let (cookie, set_cookie) = cookie.expect("logged in");
    let mut bodies = vec![set_cookie];
    for path in [
        "",
        "?full=true",
        "?sort=battery&desc=true",
        "login",
        "metrics",
        "healthz",
    ] {
        for cookie in [None, Some(cookie.as_str())] {
            let mut req = c.get(format!("{url}{path}"));
            if let Some(cookie) = cookie {
                req = req.header("cookie", cookie);
            }
            bodies.push(text(req.send().await.unwrap()).await.1);
        }
    }
    let mut live = c
        .get(format!("{url}live?ids=kx1001,kx1002,ex7001"))
        .send()
        .await
        .unwrap();
    let chunk = tokio::time::timeout(T, live.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    bodies.push(String::from_utf8_lossy(&chunk).to_string());
    assert!(
        bodies[2].contains("exlive_login_refused"),
        "the refused login is shown"
    );
    for body in &bodies {
        for secret in &secrets {
            assert!(
                !body.contains(secret.as_str()),
                "`{secret}` on a page:\n{body}"
            );
        }
    }
}

/// One address holds at most `MAX_CONNECTIONS_PER_ADDRESS` (32) connections: the next
/// is closed at once, counted in `/metrics`, and a place comes back when one closes.
#[tokio::test]
async fn one_address_holds_at_most_32_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Mosquitto::start();
    let s = start(&broker, |_| {}).await;
    let addr = s
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut held = Vec::new();
    for _ in 0..vehicle2mqtt::status_page::MAX_CONNECTIONS_PER_ADDRESS {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let ask = |addr: String| async move {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = c
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(T, c.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).to_string()
    };
    assert_eq!(ask(addr.clone()).await, "", "the 33rd is closed unanswered");
    drop(held.pop());
    let end = Instant::now() + T;
    let metrics = loop {
        let answer = ask(addr.clone()).await;
        if answer.starts_with("HTTP/1.1 200") {
            break answer;
        }
        assert!(Instant::now() < end, "no place came back: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Refused ones are counted (the figure may lag a second behind: the snapshot's tick).
    let end = Instant::now() + T;
    let mut metrics = metrics;
    while !metrics.contains("page_connections_refused_total")
        || metrics.contains("page_connections_refused_total 0")
    {
        assert!(Instant::now() < end, "not counted:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(held.pop());
        metrics = ask(addr.clone()).await;
    }
    drop(held);
    s.bridge.stop().await;
}

/// At most `MAX_CONNECTIONS` (64) connections are held: 64 that say nothing take every
/// place, the next waits unanswered (in the kernel's backlog, costing the bridge
/// nothing); one of them closing lets it in.
#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Mosquitto::start();
    let s = start(&broker, |_| {}).await;
    let addr = s
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // From four loopback addresses (127.0.0.2-5), 16 each: past the per-address cap.
    let mut silent = Vec::new();
    for i in 0..vehicle2mqtt::status_page::MAX_CONNECTIONS {
        let from = std::net::SocketAddr::from(([127, 0, 0, 2 + (i / 16) as u8], 0));
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(from).unwrap();
        silent.push(socket.connect(addr.parse().unwrap()).await.unwrap());
    }
    let mut next = tokio::net::TcpStream::connect(&addr).await.unwrap();
    next.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let early = tokio::time::timeout(Duration::from_secs(2), next.read_to_end(&mut answer)).await;
    assert!(
        early.is_err(),
        "answered past the cap: {}",
        String::from_utf8_lossy(&answer)
    );
    drop(silent.pop());
    tokio::time::timeout(T, next.read_to_end(&mut answer))
        .await
        .expect("answered once a place was free")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(silent);
    s.bridge.stop().await;
}
