//! vehicle2mqtt: brings connected vehicles from xchanger, iauto360, kingxun and EXLIVE
//! into MQTT and Home Assistant, and carries commands back.
//!
//! Layers (arrows point down only): `protocol` (pure codecs) → `connectors` (I/O per
//! upstream) → `model` (shared domain) → `bridge` (hub) → `hass` / `mqtt`; `config`
//! feeds them all and `main.rs` wires them together.

pub mod bridge;
pub mod cluster;
pub mod config;
pub mod connector;
pub mod connectors;
pub mod controls;
#[cfg(feature = "simulators")]
pub mod demo;
pub mod derive;
pub mod geo;
pub mod hass;
pub mod logging;
pub mod model;
pub mod mqtt;
pub mod observe;
pub mod protocol;
pub mod registry;
pub mod shared;
/// Device simulators and fake clouds (the demo, `simulate`, tests, benches): kept out of
/// a build without the `simulators` feature, so a production bridge links no fixtures.
#[cfg(feature = "simulators")]
pub mod sim;
pub mod state_dir;
pub mod status_page;
pub mod trip_log;
pub mod upstream;
pub mod zone;
