//! What an upstream declares about itself, once: its config section, how that section is
//! checked, how its connector starts and (with the `simulators` feature) how it is
//! simulated for `demo` and `simulate`. The list of upstreams is [`crate::registry`]; the
//! rest of the bridge (config, `main`, the demo) iterates it and names no upstream.

use std::path::Path;

use crate::connector::Connector;

/// One upstream. Implemented by a marker type in `connectors/<name>/`.
pub trait Upstream: 'static {
    /// The `[<name>]` section of the config file.
    type Config: Default
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static;
    /// Settings of the section (`kxsvr.key`) whose values are text even when they are
    /// all digits: from the environment they are taken exactly as written.
    const TEXT_KEYS: &'static [&'static str] = &[];
    fn enabled(config: &Self::Config) -> bool;
    /// Every invalid setting as (key within the section, reason).
    fn problems(config: &Self::Config) -> Vec<(String, String)>;
    /// The connector for an enabled section; `state_dir` is the bridge's own.
    fn connector(config: &Self::Config, state_dir: &Path) -> Box<dyn Connector>;
}

/// An address the demo takes, with the `demo` flag that moves it.
#[cfg(feature = "simulators")]
pub type DemoAddress = (std::net::SocketAddr, &'static str);

/// Something the demo keeps running until the bridge stops (a fake cloud).
#[cfg(feature = "simulators")]
pub type Running = Box<dyn std::any::Any + Send>;

/// How an upstream is simulated: `vehicle2mqtt simulate <COMMAND>` and its part of
/// `vehicle2mqtt demo`. Implemented beside the upstream's simulator.
#[cfg(feature = "simulators")]
pub trait Simulated: Upstream {
    /// The `simulate` subcommand's name, help line and arguments.
    const COMMAND: &'static str;
    const ABOUT: &'static str;
    type Args: clap::Args + Send;
    /// Runs `simulate <COMMAND>` until `shutdown`; an error says why it stopped early.
    fn simulate(
        args: Self::Args,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;

    /// The ports the demo takes, as (`demo` flag without `--`, default port).
    const DEMO_PORTS: &'static [(&'static str, u16)];
    /// Sets the section up for the demo, on 127.0.0.1 at the ports the user chose.
    fn demo_config(config: &mut Self::Config, port: &dyn Fn(&str) -> u16);
    /// The local addresses the demo will bind, to name a taken one with its flag.
    fn demo_addresses(config: &Self::Config) -> Vec<DemoAddress>;
    /// Started before the bridge (a fake cloud its first poll finds) and kept until it stops.
    fn demo_before(
        _config: &Self::Config,
    ) -> impl std::future::Future<Output = anyhow::Result<Option<Running>>> + Send {
        async { Ok(None) }
    }
    /// Started beside the bridge (devices that connect to it); runs until `shutdown`.
    fn demo_after(
        _config: Self::Config,
        _shutdown: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
    /// What the demo shows the user: its vehicles, and example commands as
    /// (what it does, vehicle id, topic after the vehicle, payload).
    fn demo_vehicles(config: &Self::Config) -> String;
    fn demo_examples(
        _config: &Self::Config,
    ) -> Vec<(&'static str, String, &'static str, &'static str)> {
        Vec::new()
    }
}

/// Builds [`crate::registry`] from one line per upstream:
/// `section: SimulateVariant => path::to::Marker,`.
macro_rules! registry {
    ($($(#[$attr:meta])* $name:ident : $variant:ident => $upstream:ty),* $(,)?) => {
        /// Every upstream's config section (`config.upstreams.<name>`).
        #[derive(Debug, Clone, Default)]
        pub struct Upstreams {
            $($(#[$attr])* pub $name: <$upstream as $crate::upstream::Upstream>::Config,)*
        }

        impl Upstreams {
            /// The section names, in the order of the registry.
            #[allow(clippy::vec_init_then_push)] // a line may carry #[cfg]
            pub fn names() -> Vec<&'static str> {
                let mut names = Vec::new();
                $($(#[$attr])* names.push(stringify!($name));)*
                names
            }

            /// Every upstream's text settings as full keys (`kingxun.kxsvr.key`).
            pub fn text_keys() -> Vec<String> {
                let mut keys = Vec::new();
                $($(#[$attr])* for key in <$upstream as $crate::upstream::Upstream>::TEXT_KEYS {
                    keys.push(format!("{}.{key}", stringify!($name)));
                })*
                keys
            }

            /// Every invalid setting of every section, as (full key, reason).
            pub fn problems(&self) -> Vec<(String, String)> {
                let mut problems = Vec::new();
                $($(#[$attr])* for (key, reason) in <$upstream as $crate::upstream::Upstream>::problems(&self.$name) {
                    problems.push((format!("{}.{key}", stringify!($name)), reason));
                })*
                problems
            }

            /// A connector for each enabled section.
            pub fn connectors(&self, state_dir: &std::path::Path) -> Vec<Box<dyn $crate::connector::Connector>> {
                let mut connectors = Vec::new();
                $($(#[$attr])* if <$upstream as $crate::upstream::Upstream>::enabled(&self.$name) {
                    connectors.push(<$upstream as $crate::upstream::Upstream>::connector(&self.$name, state_dir));
                })*
                connectors
            }

            /// Reads the section `name` from `map`; `false` when no upstream has that name.
            pub(crate) fn deserialize_section<'de, A: serde::de::MapAccess<'de>>(
                &mut self,
                name: &str,
                map: &mut A,
            ) -> Result<bool, A::Error> {
                match name {
                    $($(#[$attr])* stringify!($name) => self.$name = map.next_value()?,)*
                    _ => return Ok(false),
                }
                Ok(true)
            }

            pub(crate) fn serialize_sections<M: serde::ser::SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
                $($(#[$attr])* map.serialize_entry(stringify!($name), &self.$name)?;)*
                Ok(())
            }
        }

        /// `vehicle2mqtt simulate <target>`: one subcommand per upstream.
        #[cfg(feature = "simulators")]
        #[derive(clap::Subcommand)]
        pub enum SimTarget {
            $(
                $(#[$attr])*
                #[command(name = <$upstream as $crate::upstream::Simulated>::COMMAND,
                          about = <$upstream as $crate::upstream::Simulated>::ABOUT)]
                $variant(<$upstream as $crate::upstream::Simulated>::Args),
            )*
        }

        #[cfg(feature = "simulators")]
        impl SimTarget {
            pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) -> Result<(), String> {
                match self {
                    $($(#[$attr])* SimTarget::$variant(args) => <$upstream as $crate::upstream::Simulated>::simulate(args, shutdown).await,)*
                }
            }
        }

        #[cfg(feature = "simulators")]
        impl Upstreams {
            /// Every port flag of the demo with its default, in registry order.
            pub fn demo_ports() -> Vec<(&'static str, u16)> {
                let mut ports = Vec::new();
                $($(#[$attr])* ports.extend_from_slice(<$upstream as $crate::upstream::Simulated>::DEMO_PORTS);)*
                ports
            }

            /// Enables and sets up every section for the demo.
            pub fn demo_config(&mut self, port: &dyn Fn(&str) -> u16) {
                $($(#[$attr])* <$upstream as $crate::upstream::Simulated>::demo_config(&mut self.$name, port);)*
            }

            pub fn demo_addresses(&self) -> Vec<$crate::upstream::DemoAddress> {
                let mut addresses = Vec::new();
                $($(#[$attr])* addresses.extend(<$upstream as $crate::upstream::Simulated>::demo_addresses(&self.$name));)*
                addresses
            }

            /// Starts what must run before the bridge; dropping the result stops it.
            pub async fn demo_before(&self) -> anyhow::Result<Vec<$crate::upstream::Running>> {
                let mut running = Vec::new();
                $($(#[$attr])* running.extend(<$upstream as $crate::upstream::Simulated>::demo_before(&self.$name).await?);)*
                Ok(running)
            }

            /// Runs every upstream's simulated devices until `shutdown`.
            pub async fn demo_after(&self, shutdown: tokio_util::sync::CancellationToken) {
                let mut tasks = tokio::task::JoinSet::new();
                $($(#[$attr])* tasks.spawn(<$upstream as $crate::upstream::Simulated>::demo_after(self.$name.clone(), shutdown.clone()));)*
                while tasks.join_next().await.is_some() {}
            }

            #[allow(clippy::vec_init_then_push)] // a line may carry #[cfg]
            pub fn demo_vehicles(&self) -> Vec<String> {
                let mut vehicles = Vec::new();
                $($(#[$attr])* vehicles.push(<$upstream as $crate::upstream::Simulated>::demo_vehicles(&self.$name));)*
                vehicles
            }

            pub fn demo_examples(&self) -> Vec<(&'static str, String, &'static str, &'static str)> {
                let mut examples = Vec::new();
                $($(#[$attr])* examples.extend(<$upstream as $crate::upstream::Simulated>::demo_examples(&self.$name));)*
                examples
            }
        }
    };
}
pub(crate) use registry;
