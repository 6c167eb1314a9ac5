//! Commands from MQTT: validated (retain, expiry, exact payload, PIN with lockout), queued
//! per vehicle, and their outcomes turned into results and lock states.

use super::*;

impl Hub {
    pub(super) fn reject(&mut self, vehicle: &str, id: &str, command: &str, reason: &str) {
        tracing::warn!(
            event = "command_rejected",
            vehicle,
            command,
            reason,
            "command rejected"
        );
        self.publish_result(vehicle, id, command, CommandStatus::Rejected, Some(reason));
    }

    pub(super) fn on_command(
        &mut self,
        vehicle: &str,
        entity: &str,
        raw: &Bytes,
        retain: bool,
        expires_in: Option<Duration>,
    ) {
        let parsed = command::parse_payload(raw);
        // A rejection carries the payload's own id when it has one, so the sender can match it.
        let id = parsed
            .as_ref()
            .ok()
            .and_then(|p| p.id.clone())
            .unwrap_or_else(new_command_id);
        if retain {
            // A retained command would fire again on every reconnect: never execute it.
            self.reject(
                vehicle,
                &id,
                entity,
                "retained command ignored: publish commands without the retain flag",
            );
            return;
        }
        let payload = match parsed {
            Ok(p) => p,
            Err(reason) => return self.reject(vehicle, &id, entity, &reason),
        };
        let Some(v) = VehicleId::new(vehicle).and_then(|vid| self.vehicles.get(&vid)) else {
            return self.reject(vehicle, &id, entity, "unknown vehicle");
        };
        let timeout_ms = self.config.bridge.command_timeout.as_millis() as i64;
        if expires_in.is_some_and(|left| left.is_zero())
            || command::is_expired(payload.ts_ms, Utc::now().timestamp_millis(), timeout_ms)
        {
            return self.reject(
                vehicle,
                &id,
                entity,
                "expired: its ts is older than command_timeout",
            );
        }
        let command = match command::to_command(entity, &payload.action, &v.info.capabilities) {
            Ok(c) => c,
            Err(reason) => return self.reject(vehicle, &id, entity, &reason),
        };
        let vid = v.info.id.clone();
        let owner = v.owner;
        let now = std::time::Instant::now();
        if let Err(refusal) = self
            .gate
            .admit(&vid, &command, payload.code.as_deref(), now)
        {
            self.info_dirty |= refusal == gate::Refusal::WrongPin;
            return self.reject(vehicle, &id, &command.name(), &refusal.to_string());
        }
        let queue = self.config.bridge.command_queue;
        let timeout = self.config.bridge.command_timeout;
        let connector = self.connectors[owner].commands.clone();
        let worker_tx = self.worker_tx.clone();
        let Some(v) = self.vehicles.get_mut(&vid) else {
            return;
        };
        let sender = v.worker.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(queue);
            tokio::spawn(worker::run(vid.clone(), rx, connector, worker_tx, timeout));
            tx
        });
        let name = command.name();
        tracing::info!(event = "command_received", vehicle = %vid, command = %name, id = %id, "command queued");
        let pending = match command {
            Command::Lock => Some(lock_state::LOCKING),
            Command::Unlock => Some(lock_state::UNLOCKING),
            _ => None,
        };
        if sender
            .try_send(Queued {
                id: id.clone(),
                command,
                // MQTT 5 message expiry: a command still queued past it is not sent.
                expires: expires_in.map(|left| Instant::now() + left),
            })
            .is_ok()
        {
            // LOCKING/UNLOCKING goes out before the command reaches the connector, so no
            // device report can be overtaken by it: the final state always comes last.
            if let Some(p) = pending {
                v.pending_lock = Some(p);
                self.publish_state(&vid);
            }
        } else {
            self.reject(
                vehicle,
                &id,
                &name,
                "command queue for this vehicle is full",
            );
        }
    }

    /// `<vehicle>/pin/set`: HA's `Command PIN` text (the gate arms the vehicle's next PIN
    /// command, or counts a wrong PIN like any other).
    pub(super) fn on_pin(&mut self, vehicle: &str, raw: &Bytes, retain: bool) {
        let id = new_command_id();
        if retain {
            return self.reject(vehicle, &id, "pin", "retained PIN ignored");
        }
        let Some(vid) = VehicleId::new(vehicle).filter(|vid| self.vehicles.contains_key(vid))
        else {
            return self.reject(vehicle, &id, "pin", "unknown vehicle");
        };
        if self.config.bridge.command_pin.is_empty() {
            return self.reject(vehicle, &id, "pin", &gate::Refusal::NoPinSet.to_string());
        }
        // HA's text entity never shows what was typed: clear it at once.
        self.send(self.topics.vehicle(vehicle, "pin"), "", false);
        let code = std::str::from_utf8(raw).ok();
        if let Err(refusal) = self.gate.arm(&vid, code, std::time::Instant::now()) {
            self.info_dirty |= refusal == gate::Refusal::WrongPin;
            return self.reject(vehicle, &id, "pin", &refusal.to_string());
        }
        let reason = format!(
            "armed: the next command within {} s",
            gate::ARMED_FOR.as_secs()
        );
        self.publish_result(vehicle, &id, "pin", CommandStatus::Succeeded, Some(&reason));
    }

    pub(super) fn on_worker(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Started { vehicle, command } => {
                let pending = match command {
                    Command::Lock => Some(lock_state::LOCKING),
                    Command::Unlock => Some(lock_state::UNLOCKING),
                    _ => None,
                };
                if let (Some(p), Some(v)) = (pending, self.vehicles.get_mut(&vehicle)) {
                    v.pending_lock = Some(p);
                    self.publish_state(&vehicle);
                }
            }
            WorkerEvent::Outcome {
                vehicle,
                id,
                command,
                status,
                reason,
            } => {
                let name = command.name();
                match status {
                    CommandStatus::Succeeded | CommandStatus::Accepted => {
                        tracing::info!(event = "command_outcome", vehicle = %vehicle, command = %name, id = %id, status = ?status)
                    }
                    _ => {
                        tracing::warn!(event = "command_outcome", vehicle = %vehicle, command = %name, id = %id,
                        status = ?status, reason = reason.as_deref().unwrap_or(""), "command did not succeed")
                    }
                }
                self.publish_result(vehicle.as_str(), &id, &name, status, reason.as_deref());
                if !status.is_final() {
                    return;
                }
                let Some(v) = self.vehicles.get_mut(&vehicle) else {
                    return;
                };
                if v.pending_lock.take().is_some() {
                    if status == CommandStatus::Succeeded {
                        let locked = command == Command::Lock;
                        v.state.set(
                            Field::Lock,
                            Value::from(if locked {
                                lock_state::LOCKED
                            } else {
                                lock_state::UNLOCKED
                            }),
                        );
                        self.sync_discovery(&vehicle, false);
                    }
                    self.publish_state(&vehicle);
                }
            }
        }
    }
}
