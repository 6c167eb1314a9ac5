//! The bridge: the hub core (`hub`, without I/O) and the event loop that feeds it
//! (this file): connector updates, MQTT events, worker events and clock ticks go in;
//! the hub's publishes go to the MQTT client (which never waits, see
//! [`crate::mqtt::Publisher`]) and its actions are carried out here: commands handed to
//! per-vehicle workers (which do the waiting), records written off the loop, the
//! snapshot behind `/metrics`, `/healthz` and the liveness file.
//!
//! The hub's parts: `fleet` (vehicles and their clocks), `outbox` (what found MQTT busy),
//! `lifecycle` (Home Assistant entities; `store` remembers them), `records` (what goes to
//! `state_dir` and when), `gate` (who may run a command), `status` (connectors and
//! `bridge/info`); `command` parses `/set` payloads, `worker` runs a vehicle's commands.

pub mod command;
mod derivations;
mod fleet;
mod gate;
mod hub;
mod lifecycle;
mod outbox;
mod page;
mod records;
mod status;
pub mod store;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerUrl, Config};
use crate::connector::{CommandRequest, Connector, ConnectorContext, UpdateSink};
use crate::model::{CommandStatus, VehicleId};
use crate::mqtt::{self, MqttStats, Publisher, SubscribeOptions};
use hub::{Action, Hub, Now, Tick};
use worker::{Gone, Queued, WorkerEvent};

/// Another cluster instance with this `cluster.instance_id` runs (started earlier): this
/// one stops, exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DuplicateInstance(pub String);

/// Capacity of the connectors → hub queue.
const UPDATE_QUEUE: usize = 8192;
/// Capacity of each connector's command queue.
const CONNECTOR_COMMAND_QUEUE: usize = 64;
/// How often messages that found MQTT busy are retried.
const RETRY_EVERY: Duration = Duration::from_millis(50);
/// How often vehicle records whose entities changed are written to `state_dir`.
const PERSIST_EVERY: Duration = Duration::from_secs(15);

impl hub::Mqtt for Publisher {
    fn subscribe(&self, filter: &str, opts: SubscribeOptions) {
        Publisher::subscribe(self, filter, opts)
    }
    fn stats(&self) -> &MqttStats {
        Publisher::stats(self)
    }
}

/// Removes the liveness file once every state write handed over is done (tokens, guard
/// settings, trips), off the loop's task.
async fn remove_alive(dir: &std::path::Path) {
    let dir = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || crate::state_dir::remove_alive(&dir)).await;
}

/// What carries the hub's actions out.
struct Io {
    state_dir: std::path::PathBuf,
    /// Each connector's command queue, by index.
    connector_commands: Vec<mpsc::Sender<CommandRequest>>,
    /// One worker per vehicle that has had a command, and what tells it the vehicle left.
    workers: HashMap<
        VehicleId,
        (
            mpsc::Sender<Queued>,
            tokio::sync::watch::Sender<Option<Gone>>,
        ),
    >,
    /// Each connector's "let this vehicle's link go" (cluster: it moved elsewhere).
    releases: Vec<mpsc::Sender<VehicleId>>,
    /// Each connector's cloud-account permit (always on when alone).
    permits: Vec<tokio::sync::watch::Sender<bool>>,
    /// The leases of the cluster's cloud accounts (none alone).
    leases: Vec<crate::connector::Lease>,
    /// Set when the hub found a second instance with this cluster id.
    duplicate: Option<String>,
    worker_tx: mpsc::Sender<WorkerEvent>,
    command_queue: usize,
    command_timeout: Duration,
    /// The write of vehicle records in progress; it says `written` when done.
    writing: Option<tokio::task::JoinHandle<()>>,
    written: mpsc::Sender<()>,
    snapshot: crate::observe::SharedSnapshot,
    /// Where finished trips go (`None` when its thread could not start).
    trip_log: Option<crate::trip_log::TripLog>,
}

impl Io {
    /// Carries out what the hub asked for, until it asks for nothing more.
    fn carry_out(&mut self, hub: &mut Hub<Publisher>) {
        loop {
            let actions = hub.take_actions();
            if actions.is_empty() {
                return;
            }
            for action in actions {
                self.act(hub, action);
            }
        }
    }

    fn act(&mut self, hub: &mut Hub<Publisher>, action: Action) {
        match action {
            Action::Command {
                vehicle,
                owner,
                queued,
            } => {
                let Some(connector) = self.connector_commands.get(owner).cloned() else {
                    // Cannot happen (the hub only knows vehicles of its connectors); still
                    // answered, so no queue place or LOCKING is left behind.
                    let outcome = WorkerEvent::Outcome {
                        vehicle,
                        id: queued.id,
                        command: queued.command,
                        status: CommandStatus::Failed,
                        reason: Some("no connector for this vehicle".into()),
                        reported_at: None,
                    };
                    hub.on_worker(outcome, Now::real());
                    return;
                };
                let (capacity, timeout) = (self.command_queue + 1, self.command_timeout);
                let worker_tx = self.worker_tx.clone();
                let (sender, _) = self.workers.entry(vehicle.clone()).or_insert_with(|| {
                    // The gate keeps a vehicle's commands to `command_queue` behind the
                    // running one, so this channel always has room.
                    let (tx, rx) = mpsc::channel(capacity);
                    let (gone, gone_rx) = tokio::sync::watch::channel(None);
                    tokio::spawn(worker::run(
                        vehicle.clone(),
                        rx,
                        connector,
                        worker_tx,
                        timeout,
                        gone_rx,
                    ));
                    (tx, gone)
                });
                if let Err(err) = sender.try_send(queued) {
                    let queued = match err {
                        mpsc::error::TrySendError::Full(q)
                        | mpsc::error::TrySendError::Closed(q) => q,
                    };
                    self.workers.remove(&vehicle);
                    let outcome = WorkerEvent::Outcome {
                        vehicle,
                        id: queued.id,
                        command: queued.command,
                        status: CommandStatus::Rejected,
                        reason: Some("command queue for this vehicle is full".into()),
                        reported_at: None,
                    };
                    hub.on_worker(outcome, Now::real());
                }
            }
            Action::Forgotten(vehicle) => {
                // Its worker rejects what it still holds (never sends it) and ends.
                if let Some((_, gone)) = self.workers.remove(&vehicle) {
                    let _ = gone.send(Some(Gone::removed()));
                }
            }
            Action::Moved { vehicle, owner, to } => {
                // Its commands here fail `moved to <to>`, in flight or queued, before the
                // connector closes the stale link (whose own answers then go nowhere).
                if let Some((_, gone)) = self.workers.remove(&vehicle) {
                    let _ = gone.send(Some(Gone::moved(&to)));
                }
                if let Some(release) = owner.and_then(|o| self.releases.get(o)) {
                    let _ = release.try_send(vehicle);
                }
            }
            Action::Permits(permits) => {
                for (permit, allowed) in self.permits.iter().zip(permits) {
                    permit.send_if_modified(|p| std::mem::replace(p, allowed) != allowed);
                }
            }
            Action::Duplicate(why) => self.duplicate = Some(why),
            Action::Lease(until) => {
                for lease in &self.leases {
                    lease.renew_until(until);
                }
            }
            Action::Persist(batch) => {
                let (dir, written) = (self.state_dir.clone(), self.written.clone());
                self.writing = Some(tokio::spawn(async move {
                    let _ = tokio::task::spawn_blocking(move || store::save_all(&dir, batch)).await;
                    let _ = written.send(()).await;
                }));
            }
            Action::LogTrip { vehicle, trip } => {
                if let Some(log) = &self.trip_log {
                    log.log(&vehicle, trip);
                }
            }
            Action::Observe { snapshot, alive } => {
                if alive {
                    crate::state_dir::write_alive(
                        &self.state_dir,
                        snapshot.mqtt_connected,
                        snapshot.health(),
                    );
                }
                if let Ok(mut shown) = self.snapshot.write() {
                    *shown = *snapshot;
                }
            }
        }
    }
}

/// Runs the bridge until `shutdown` is cancelled: starts the broker (if embedded), the
/// MQTT client and every connector.
pub async fn run(
    mut config: Config,
    connectors: Vec<Box<dyn Connector>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if config.mqtt.url == "embedded" && config.mqtt.username.is_empty() {
        // Never an anonymous broker: a login made once, kept in state_dir (0600).
        let (user, password) = crate::state_dir::embedded_login(&config.bridge.state_dir)?;
        config.mqtt.username = user;
        config.mqtt.password = crate::config::Secret::new(password);
    }
    let cluster = config.cluster.settings();
    if config.mqtt.client_id.is_empty() {
        let installation = crate::state_dir::client_id(&config.bridge.state_dir)?;
        // In a cluster, the instance id in front; the installation's part keeps two
        // instances started with one id apart, so each hears the other (and one stops).
        config.mqtt.client_id = match &cluster {
            Some(c) => format!("{}-{installation}", c.instance_id)
                .chars()
                .take(64)
                .collect(),
            None => installation,
        };
    }
    let topics = crate::hass::Topics::new(&config.mqtt.base_topic, &config.mqtt.discovery_prefix);
    // Alone, the bridge's will is the cluster's state; in a cluster each instance's will
    // is its own, and a sentinel session carries the cluster's (docs/cluster.md).
    let will_topic = match &cluster {
        Some(c) => topics.instance_state(&c.instance_id),
        None => topics.bridge_state(),
    };
    let mut endpoints = Vec::new();
    for url in config
        .mqtt
        .broker_urls()
        .map_err(anyhow::Error::msg)
        .context("mqtt.url")?
    {
        endpoints.push(match url {
            BrokerUrl::Embedded => start_embedded(&config)?,
            BrokerUrl::Tcp { host, port, tls } => mqtt::Endpoint { host, port, tls },
        });
    }
    let (mqtt_tx, mut mqtt_rx) = mpsc::channel(1024);
    // The embedded broker (rumqttd's 3.1.1 listener) is spoken to in 3.1.1.
    let protocol = match config.mqtt.url == "embedded" {
        true => crate::config::MqttProtocol::V311,
        false => config.mqtt.protocol,
    };
    let (publisher, mqtt_task) =
        mqtt::start(&config.mqtt, &endpoints, protocol, mqtt_tx, will_topic)?;
    let sentinel = match cluster.is_some() {
        true => Some(start_sentinel(
            &config,
            &endpoints,
            protocol,
            topics.bridge_state(),
        )?),
        false => None,
    };

    let (update_tx, mut update_rx) = mpsc::channel(UPDATE_QUEUE);
    let (worker_tx, mut worker_rx) = mpsc::channel(1024);
    let (exit_tx, mut exit_rx) = mpsc::channel::<(usize, String)>(16);
    let mut infos = Vec::new();
    let mut speed_limits = Vec::new();
    let mut connector_commands = Vec::new();
    let (mut releases, mut permits, mut accounts) = (Vec::new(), Vec::new(), Vec::new());
    let mut leases = Vec::new();
    for (index, connector) in connectors.into_iter().enumerate() {
        let name = connector.name();
        let configured = connector
            .configured_vehicles()
            .map(|ids| ids.into_iter().collect());
        let limits = connector.speed_limits();
        let (cmd_tx, cmd_rx) = mpsc::channel(CONNECTOR_COMMAND_QUEUE);
        let (release_tx, release_rx) = mpsc::channel(RELEASE_QUEUE);
        let account = cluster.as_ref().and(connector.cloud_account());
        // Alone every account is this bridge's; in a cluster it waits for its permit.
        let (permit_tx, permit_rx) = tokio::sync::watch::channel(account.is_none());
        let lease = match account.is_some() {
            true => crate::connector::Lease::expired(),
            false => crate::connector::Lease::forever(),
        };
        if account.is_some() {
            leases.push(lease.clone());
        }
        let ctx = ConnectorContext {
            updates: UpdateSink::new(index, update_tx.clone()),
            commands: cmd_rx,
            shutdown: shutdown.child_token(),
            releases: release_rx,
            permit: permit_rx,
            lease,
        };
        let gated = account.is_some() && connector.fresh_copy().is_some();
        let exit_tx = exit_tx.clone();
        tokio::spawn(async move {
            let result = match gated {
                true => run_permitted(connector, ctx).await,
                false => connector.run(ctx).await,
            };
            let reason = match result {
                Ok(()) => "stopped".to_string(),
                Err(err) => format!("{err:#}"),
            };
            let _ = exit_tx.send((index, reason)).await;
        });
        tracing::info!(
            event = "connector_started",
            connector = name,
            "connector started"
        );
        infos.push((name, configured));
        speed_limits.push((name, limits));
        connector_commands.push(cmd_tx);
        releases.push(release_tx);
        permits.push(permit_tx);
        accounts.push(account);
    }
    drop(update_tx);

    let state_dir = config.bridge.state_dir.clone();
    let records = match config.bridge.remember_vehicles {
        true => {
            let dir = state_dir.clone();
            tokio::task::spawn_blocking(move || store::load_all(&dir))
                .await
                .unwrap_or_default()
        }
        false => Default::default(),
    };
    let http_listen = config.bridge.http_listen.trim().to_string();
    let page_settings = crate::status_page::Settings {
        base_topic: config.mqtt.base_topic.clone(),
        token: config.bridge.http_token.clone(),
        ingress_from: config
            .bridge
            .ingress
            .then(|| config.bridge.ingress_from.parse().ok())
            .flatten(),
        map_tiles: config.bridge.map_tiles.clone(),
        broker: match config.mqtt.url.as_str() {
            "embedded" => format!("embedded, {}", mqtt::describe_endpoints(&endpoints)),
            _ => mqtt::describe_endpoints(&endpoints),
        },
    };
    let (written_tx, mut written_rx) = mpsc::channel(1);
    let (trip_log, trip_log_thread) = match crate::trip_log::TripLog::start(
        &state_dir,
        config.derive.trips.keep,
    ) {
        Ok((log, thread)) => (Some(log), Some(thread)),
        Err(err) => {
            tracing::error!(event = "trip_log_unavailable", error = %err, "trip log: cannot start its writer; trips are published but not logged");
            (None, None)
        }
    };
    let mut io = Io {
        state_dir: state_dir.clone(),
        connector_commands,
        workers: HashMap::new(),
        worker_tx,
        command_queue: config.bridge.command_queue,
        command_timeout: config.bridge.command_timeout,
        writing: None,
        written: written_tx,
        snapshot: crate::observe::SharedSnapshot::default(),
        trip_log,
        releases,
        permits,
        leases,
        duplicate: None,
    };
    let mut hub = Hub::new(config, publisher.clone(), infos, records, Now::real());
    hub.set_accounts(accounts);
    for (name, limits) in speed_limits {
        hub.speed_limits(name, limits);
    }
    io.carry_out(&mut hub);
    // The status page's questions; without a page nothing sends (the sender is dropped).
    let (ask_tx, mut ask_rx) = mpsc::channel::<crate::status_page::feed::Ask>(64);
    if !http_listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&http_listen)
            .await
            .with_context(|| format!("bridge.http_listen: cannot listen on {http_listen}"))?;
        tracing::info!(event = "http_listening", listen = %http_listen,
            "serving the status page, /metrics and /healthz");
        let feed = crate::status_page::feed::Feed::default();
        hub.set_feed(feed.clone());
        let (snapshot, stop, ask) = (io.snapshot.clone(), shutdown.clone(), ask_tx.clone());
        tokio::spawn(async move {
            if let Err(e) =
                crate::status_page::serve(listener, snapshot, feed, ask, page_settings, stop).await
            {
                tracing::error!(event = "http_stopped", error = %e, "status page stopped");
            }
        });
    }
    drop(ask_tx);
    let mut retry_tick = tokio::time::interval(RETRY_EVERY);
    let mut stale_tick = tokio::time::interval(hub.stale_check_every());
    let mut info_tick = tokio::time::interval(Duration::from_secs(1));
    let mut alive_tick = tokio::time::interval(crate::state_dir::ALIVE_EVERY);
    let mut persist_tick = tokio::time::interval(PERSIST_EVERY);

    loop {
        let rediscover_at = hub.rediscover_at();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some((index, update)) = update_rx.recv() => hub.on_update(index, update, Now::real()),
            Some(event) = mqtt_rx.recv() => hub.on_mqtt(event, Now::real()),
            Some(event) = worker_rx.recv() => hub.on_worker(event, Now::real()),
            Some(ask) = ask_rx.recv() => match ask {
                crate::status_page::feed::Ask::Fleet(query, reply) => {
                    let _ = reply.send(hub.fleet_page(&query));
                }
                crate::status_page::feed::Ask::Positions(reply) => {
                    let _ = reply.send(hub.positions());
                }
                crate::status_page::feed::Ask::Message { topic, payload } => {
                    let message = crate::mqtt::MqttEvent::Message {
                        topic,
                        payload: payload.into(),
                        retain: false,
                        expires_in: None,
                    };
                    hub.on_mqtt(message, Now::real());
                }
            },
            Some((index, reason)) = exit_rx.recv() => {
                if !shutdown.is_cancelled() && hub.on_connector_exit(index, &reason, Now::real()) {
                    io.carry_out(&mut hub);
                    drain(&mut mqtt_rx);
                    hub.going_offline();
                    publisher.disconnect().await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), mqtt_task).await;
                    remove_alive(&state_dir).await;
                    anyhow::bail!("{} cannot go on: {reason}", hub.connector_name(index));
                }
            }
            _ = async {
                let at = rediscover_at.unwrap_or_else(std::time::Instant::now);
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await
            }, if rediscover_at.is_some() => hub.on_tick(Tick::Rediscover, Now::real()),
            _ = stale_tick.tick() => hub.on_tick(Tick::Stale, Now::real()),
            _ = persist_tick.tick() => hub.on_tick(Tick::Persist, Now::real()),
            _ = info_tick.tick() => hub.on_tick(Tick::Info, Now::real()),
            _ = alive_tick.tick() => hub.on_tick(Tick::Alive, Now::real()),
            Some(()) = written_rx.recv() => hub.records_written(),
            _ = retry_tick.tick(), if hub.wants_retry() => hub.on_tick(Tick::Retry, Now::real()),
        }
        io.carry_out(&mut hub);
        if let Some(why) = io.duplicate.take() {
            // Said nothing offline: the instance with this id that stays is online.
            drain(&mut mqtt_rx);
            publisher.disconnect().await;
            if let Some((sentinel, _)) = &sentinel {
                sentinel.disconnect().await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), mqtt_task).await;
            remove_alive(&state_dir).await;
            return Err(DuplicateInstance(why).into());
        }
    }

    tracing::info!(event = "shutdown", "shutting down: publishing offline");
    if let Some(writing) = io.writing.take() {
        let _ = writing.await;
        hub.records_written();
    }
    while let Some(batch) = hub.final_records(Now::real()) {
        let dir = state_dir.clone();
        let _ = tokio::task::spawn_blocking(move || store::save_all(&dir, batch)).await;
    }
    // The trips handed over are written before the bridge says it has stopped.
    io.trip_log = None;
    if let Some(thread) = trip_log_thread {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    // A stopped bridge is not alive, whatever the file said a moment ago.
    remove_alive(&state_dir).await;
    // The bridge's own state comes back through the broker (its instance state in a
    // cluster): once its `offline` does, everything said before it has been taken (a DISCONNECT sent while
    // QoS 1 publishes wait for the broker's receive window would drop them).
    let last_word = Some(match &cluster {
        Some(c) => topics.instance_state(&c.instance_id),
        None => topics.bridge_state(),
    });
    let taken = drain_until(&mut mqtt_rx, last_word);
    hub.going_offline();
    // What found the client's queue full goes out before the DISCONNECT (at most 3 s).
    let flush_until = tokio::time::Instant::now() + Duration::from_secs(3);
    while hub.wants_retry() && tokio::time::Instant::now() < flush_until {
        hub.on_tick(Tick::Retry, Now::real());
        tokio::time::sleep(RETRY_EVERY).await;
    }
    if let Some(taken) = taken {
        let _ = tokio::time::timeout(Duration::from_secs(3), taken).await;
    }
    publisher.disconnect().await;
    if tokio::time::timeout(Duration::from_secs(5), mqtt_task)
        .await
        .is_err()
    {
        tracing::warn!(
            event = "shutdown_flush_timeout",
            "MQTT did not flush within 5 s"
        );
    }
    // After the instance's last words: a clean DISCONNECT, so the sentinel's will (the
    // cluster `offline`) is not sent while other instances run.
    if let Some((sentinel, task)) = sentinel {
        sentinel.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    Ok(())
}

/// From now on what MQTT brings is thrown away, so that the client's event loop, which
/// waits for room in this queue, is never held up while the last words go out (in a
/// cluster the owner topics this instance clears come back to it).
fn drain(events: &mut mpsc::Receiver<crate::mqtt::MqttEvent>) {
    let _ = drain_until(events, None);
}

/// [`drain`], telling when an `offline` on `topic` has come by.
fn drain_until(
    events: &mut mpsc::Receiver<crate::mqtt::MqttEvent>,
    topic: Option<String>,
) -> Option<tokio::sync::oneshot::Receiver<()>> {
    let (_, closed) = mpsc::channel(1);
    let mut rx = std::mem::replace(events, closed);
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let mut seen_tx = Some(seen_tx);
    let watching = topic.is_some();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if let crate::mqtt::MqttEvent::Message {
                topic: t, payload, ..
            } = &event
            {
                if Some(t) == topic.as_ref() && &payload[..] == b"offline" {
                    if let Some(tx) = seen_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    });
    watching.then_some(seen_rx)
}

/// Capacity of each connector's release queue (cluster: vehicles that moved elsewhere).
const RELEASE_QUEUE: usize = 1024;

/// The cluster's sentinel: a second session whose last will sets `<base>/bridge/state`
/// `offline`, and which sets it `online` on every connection. A survivor that sees the
/// `offline` of another's sentinel puts `online` back (the hub, `bridge/state`); the last
/// instance's will stays.
fn start_sentinel(
    config: &Config,
    endpoints: &[mqtt::Endpoint],
    protocol: crate::config::MqttProtocol,
    topic: String,
) -> anyhow::Result<(Publisher, tokio::task::JoinHandle<()>)> {
    let mut cfg = config.mqtt.clone();
    let id: String = cfg.client_id.chars().take(55).collect();
    cfg.client_id = format!("{id}-sentinel");
    cfg.queue_capacity = 16;
    let (tx, mut rx) = mpsc::channel(16);
    let (sentinel, task) = mqtt::start(&cfg, endpoints, protocol, tx, topic.clone())?;
    let publisher = sentinel.clone();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if matches!(event, crate::mqtt::MqttEvent::Connected) {
                publisher.try_publish(&topic, "online", true);
            }
        }
    });
    Ok((sentinel, task))
}

/// Runs a cloud connector while this cluster instance holds its account's permit: a
/// fresh copy each time the permit comes, stopped (its tasks ended) the moment it goes,
/// so two instances never poll one account at once.
async fn run_permitted(template: Box<dyn Connector>, ctx: ConnectorContext) -> anyhow::Result<()> {
    let ConnectorContext {
        updates,
        mut commands,
        shutdown,
        mut permit,
        lease,
        ..
    } = ctx;
    let name = template.name();
    let not_here = "offline: another instance polls this account";
    loop {
        loop {
            if *permit.borrow_and_update() {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = permit.changed() => if changed.is_err() { return Ok(()) },
                Some(req) = commands.recv() => {
                    let _ = req.progress.try_send(crate::model::CommandProgress::Failed(not_here.into()));
                }
            }
        }
        let Some(copy) = template.fresh_copy() else {
            return Ok(());
        };
        tracing::info!(
            event = "cluster_account_started",
            connector = name,
            "this instance polls the account now"
        );
        let stop = shutdown.child_token();
        let (forward, forwarded) = mpsc::channel(CONNECTOR_COMMAND_QUEUE);
        let mut ctx = ConnectorContext::alone(updates.clone(), forwarded, stop.clone());
        ctx.lease = lease.clone();
        let run = copy.run(ctx);
        tokio::pin!(run);
        loop {
            tokio::select! {
                ended = &mut run => return ended,
                Some(req) = commands.recv() => {
                    if let Err(refused) = forward.try_send(req) {
                        let req = match refused {
                            mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
                        };
                        let _ = req.progress.try_send(crate::model::CommandProgress::Failed("connector busy".into()));
                    }
                }
                changed = permit.changed() => {
                    if changed.is_err() || !*permit.borrow_and_update() {
                        tracing::info!(event = "cluster_account_stopped", connector = name,
                            "another instance polls the account now (or this one is fenced)");
                        stop.cancel();
                        let _ = (&mut run).await;
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(feature = "embedded-broker")]
fn start_embedded(config: &Config) -> anyhow::Result<mqtt::Endpoint> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let listen = mqtt::broker::start(&config.mqtt, 20_000)?;
    let host = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
        IpAddr::V6(ip) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.to_string(),
        ip => ip.to_string(),
    };
    tracing::info!(event = "embedded_broker_started", listen = %listen,
        "embedded MQTT broker listening on {listen}: point Home Assistant's MQTT integration here");
    Ok(mqtt::Endpoint {
        host,
        port: listen.port(),
        tls: false,
    })
}

#[cfg(not(feature = "embedded-broker"))]
fn start_embedded(_config: &Config) -> anyhow::Result<mqtt::Endpoint> {
    anyhow::bail!(
        "mqtt.url = \"embedded\" but this build has no embedded broker (feature `embedded-broker`)"
    )
}

#[cfg(test)]
mod size_tests {
    /// Each vehicle, linked or only configured, is one of these (boxed): 480 bytes under
    /// `cargo test` (debug), what grows with every field added here. Shrinking passes,
    /// growing fails: see docs/ARCHITECTURE.md, "Memory" (`-Zprint-type-sizes`).
    #[test]
    fn a_hub_vehicle_keeps_its_size() {
        let size = std::mem::size_of::<super::fleet::Vehicle>();
        assert!(
            size <= 480,
            "the hub's Vehicle grew to {size} bytes (480): box what few vehicles use, \
             see docs/ARCHITECTURE.md \"Memory\" (-Zprint-type-sizes shows the layout)"
        );
    }
}
