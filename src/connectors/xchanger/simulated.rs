//! `simulate xchanger-cloud` and the xchanger part of `demo`.

use std::net::SocketAddr;
use std::time::Duration;

use super::sim::{FakeOptions, FakeXchanger};

/// `simulate xchanger-cloud`.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
    /// Serve api v2 and check every signature with this key (default: v1).
    #[arg(long)]
    app_key: Option<String>,
}

const DEMO_APP_KEY: &str = "demo-app-key";

impl crate::upstream::Simulated for super::Xchanger {
    const COMMAND: &'static str = "xchanger-cloud";
    const ABOUT: &'static str =
        "A fake xchanger (Lynk & Co) cloud with one car, for trying the connector: \
        username `driver@example.com`, password `correct horse`, VIN L6T7722E0LN000001";
    type Args = Args;

    async fn simulate(
        args: Args,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), String> {
        let opts = FakeOptions {
            app_key: args.app_key,
            ..Default::default()
        };
        let started = FakeXchanger::start(opts, args.listen).await;
        let what = "fake xchanger cloud";
        crate::sim::serve_fake(what, args.listen, started, FakeXchanger::url, shutdown).await
    }

    const DEMO_PORTS: &'static [(&'static str, u16)] = &[("xchanger-port", 8480)];
    fn demo_config(x: &mut super::XchangerConfig, port: &dyn Fn(&str) -> u16) {
        x.enabled = true;
        x.base_url = format!("http://127.0.0.1:{}", port("xchanger-port"));
        x.auth_base_url = x.base_url.clone();
        let fake = FakeOptions::default();
        x.username = fake.username;
        x.password = crate::shared::Secret::new(fake.password);
        x.app_key = crate::shared::Secret::new(DEMO_APP_KEY);
        // The shipped defaults: commands are confirmed on their own schedule.
        x.poll_interval = Duration::from_secs(30);
    }
    fn demo_addresses(x: &super::XchangerConfig) -> Vec<crate::upstream::DemoAddress> {
        crate::sim::local_port(&x.base_url)
            .map(|a| (a, "xchanger-port"))
            .into_iter()
            .collect()
    }
    async fn demo_before(
        x: &super::XchangerConfig,
    ) -> anyhow::Result<Option<crate::upstream::Running>> {
        let listen = crate::sim::local_port(&x.base_url)
            .ok_or_else(|| anyhow::anyhow!("demo: no port in {}", x.base_url))?;
        let opts = FakeOptions {
            app_key: Some(DEMO_APP_KEY.into()),
            ..Default::default()
        };
        Ok(Some(Box::new(FakeXchanger::start(opts, listen).await?)))
    }
    fn demo_vehicles(_: &super::XchangerConfig) -> String {
        "a Lynk & Co car L6T7722E0LN000001 (fake xchanger cloud)".into()
    }
    fn demo_examples(
        _: &super::XchangerConfig,
    ) -> Vec<(&'static str, String, &'static str, &'static str)> {
        vec![(
            "Start the car",
            "L6T7722E0LN000001".into(),
            "engine/set",
            "ON",
        )]
    }
}
