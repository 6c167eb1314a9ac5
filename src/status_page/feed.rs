//! What the hub tells the page: a fleet page on request (the hub holds the vehicles; the
//! page never keeps a copy of 10 000 of them), the last events and command results (a
//! ring), and live changes for the server-sent events.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Vehicles on one page of the fleet table.
pub const PER_PAGE: usize = 100;
/// Events and command results kept.
pub const ENTRIES: usize = 500;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateFilter {
    #[default]
    All,
    Online,
    Offline,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    #[default]
    Name,
    Upstream,
    State,
    Reported,
    Battery,
}

/// The fleet table's query string (every field optional: a bare `/` is page 1 by name).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FleetQuery {
    pub q: String,
    pub state: StateFilter,
    pub sort: SortKey,
    pub desc: bool,
    /// From 1.
    pub page: usize,
}

/// One vehicle as the page shows it. Only what the state says (never a config value).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FleetRow {
    pub id: String,
    pub name: String,
    pub upstream: &'static str,
    /// As last published on `<vehicle>/availability`; `None` before the first.
    pub online: Option<bool>,
    /// Since when it is what `online` says (this run).
    pub since: Option<String>,
    /// The vehicle's own clock, where its upstream gives one.
    pub reported_at: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub lock: Option<String>,
    /// Battery or fuel level, with its unit.
    pub energy: Option<String>,
    /// The last command's name, result and time.
    pub command: Option<String>,
    /// Controls the page may offer (`lock`, `refresh`).
    pub actions: Vec<&'static str>,
}

#[derive(Debug, Clone, Default)]
pub struct FleetPage {
    pub rows: Vec<FleetRow>,
    /// Vehicles that match the filter.
    pub matched: usize,
    pub total: usize,
    pub online: usize,
    /// From 1, within `1..=pages`.
    pub page: usize,
    pub pages: usize,
}

/// One event or command result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    pub at: String,
    pub vehicle: String,
    /// `event` or `result`.
    pub kind: &'static str,
    /// The event type, or the command and its status.
    pub what: String,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub enum Live {
    Vehicle(Box<FleetRow>),
    Entry(Entry),
}

/// The hub's side: it pushes, the page reads and listens.
#[derive(Clone)]
pub struct Feed {
    entries: Arc<Mutex<VecDeque<Entry>>>,
    live: broadcast::Sender<Live>,
    /// The vehicles some open page shows, and how many pages show each: only their rows
    /// are built and sent (a fleet of 10 000 reports far more than a page shows).
    watched: Arc<Mutex<HashMap<String, usize>>>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            entries: Arc::new(Mutex::new(VecDeque::with_capacity(ENTRIES))),
            // A client that falls this far behind is told to reload (`Lagged`).
            live: broadcast::channel(1024).0,
            watched: Arc::default(),
        }
    }
}

impl Feed {
    pub fn entry(&self, entry: Entry) {
        {
            let mut ring = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if ring.len() >= ENTRIES {
                ring.pop_back();
            }
            ring.push_front(entry.clone());
        }
        let _ = self.live.send(Live::Entry(entry));
    }

    /// Whether an open page shows this vehicle (only then is its row built).
    pub fn watches(&self, id: &str) -> bool {
        let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        !watched.is_empty() && watched.contains_key(id)
    }

    /// A page shows these vehicles until the returned guard goes.
    pub fn watch(&self, ids: Vec<String>) -> Watching {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        for id in &ids {
            *watched.entry(id.clone()).or_default() += 1;
        }
        Watching {
            ids,
            watched: self.watched.clone(),
        }
    }

    pub fn vehicle(&self, row: FleetRow) {
        let _ = self.live.send(Live::Vehicle(Box::new(row)));
    }

    /// The newest `n`, newest first, and how many are kept.
    pub fn entries(&self, n: usize) -> (Vec<Entry>, usize) {
        let ring = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        (ring.iter().take(n).cloned().collect(), ring.len())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.live.subscribe()
    }
}

/// A page's watch over its vehicles; ends when dropped.
pub struct Watching {
    ids: Vec<String>,
    watched: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        for id in &self.ids {
            if let Some(n) = watched.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    watched.remove(id);
                }
            }
        }
    }
}

/// What the page asks of the hub's event loop.
pub enum Ask {
    Fleet(FleetQuery, oneshot::Sender<FleetPage>),
    /// Every vehicle with a position, for the map: `[id, name, latitude, longitude]`.
    Positions(oneshot::Sender<Vec<MapPoint>>),
    /// A command or a purge, as if it came over MQTT on `topic` (not retained): the same
    /// checks, the same single result on `<vehicle>/command/result`.
    Message {
        topic: String,
        payload: Vec<u8>,
    },
}

pub type AskSender = mpsc::Sender<Ask>;

/// A vehicle on the map: id, name, latitude, longitude (a JSON array each: 10 000 of them
/// are ~600 KB, fetched once by the map, never part of the page).
pub type MapPoint = (String, String, f64, f64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_only_for_vehicles_an_open_page_shows() {
        let feed = Feed::default();
        assert!(!feed.watches("kx1"));
        let a = feed.watch(vec!["kx1".into(), "kx2".into()]);
        let b = feed.watch(vec!["kx1".into()]);
        assert!(feed.watches("kx1") && feed.watches("kx2") && !feed.watches("kx3"));
        drop(a);
        assert!(feed.watches("kx1") && !feed.watches("kx2"));
        drop(b);
        assert!(!feed.watches("kx1"));
    }

    #[test]
    fn entries_are_bounded_newest_first() {
        let feed = Feed::default();
        for i in 0..ENTRIES + 3 {
            feed.entry(Entry {
                at: String::new(),
                vehicle: format!("v{i}"),
                kind: "event",
                what: String::new(),
                detail: String::new(),
            });
        }
        let (e, kept) = feed.entries(usize::MAX);
        assert_eq!(kept, ENTRIES);
        assert_eq!(e.len(), ENTRIES);
        assert_eq!(e[0].vehicle, format!("v{}", ENTRIES + 2));
    }
}
