//! What connectors tell the hub: vehicles, states (with the vehicle's own time),
//! availability, events, counters and health.

use super::*;

impl Hub {
    pub(super) fn on_update(&mut self, owner: usize, update: Update) {
        match update {
            Update::Vehicle(mut info) => {
                let id = info.id.clone();
                match self.vehicles.get_mut(&id) {
                    Some(v) => {
                        // What the connector was not told (yet) stays as the device
                        // reported it before, this run or the last.
                        if info.reported_model.is_none() {
                            info.reported_model = v.info.reported_model.take();
                        }
                        if info.sw_version.is_none() {
                            info.sw_version = v.info.sw_version.take();
                        }
                        v.owner = owner;
                        v.info = info;
                        v.info_known = true;
                    }
                    None => {
                        tracing::info!(event = "vehicle_added", vehicle = %id, connector = self.connectors[owner].name, "new vehicle");
                        self.vehicles
                            .insert(id.clone(), Box::new(Vehicle::new(owner, info)));
                        self.info_dirty = true;
                    }
                }
                // Availability waits for the first state or the connector's word (or the
                // next stale check): never "online" for a device that has not linked.
                self.sync_discovery(&id, false);
            }
            Update::State {
                vehicle,
                state,
                replace,
            } => {
                let name = self.connectors[owner].name;
                let v = self.vehicles.entry(vehicle.clone()).or_insert_with(|| {
                    tracing::info!(event = "vehicle_added", vehicle = %vehicle, connector = name, "new vehicle");
                    Box::new(Vehicle::new(owner, default_info(&vehicle, name)))
                });
                // The vehicle's own time when the upstream gives one, else now; never
                // ahead of the bridge's clock.
                let now = Utc::now();
                let own_time = state
                    .get(Field::LastUpdate)
                    .and_then(|t| match t {
                        Value::Text(t) => chrono::DateTime::parse_from_rfc3339(t).ok(),
                        _ => None,
                    })
                    .map(|t| t.with_timezone(&Utc).min(now));
                // Once the upstream gives the vehicle's own time, updates without one
                // (a data plan, a connection status) do not make it "just reported".
                v.own_clock |= own_time.is_some();
                let reported = own_time.unwrap_or(now);
                let advances = own_time.is_some() || !v.own_clock;
                for field in state.values.keys() {
                    v.field_times.insert(*field, reported);
                }
                v.reported_this_run.absorb(&state);
                let grew = v.shape.absorb(&state) | v.shape.fields.insert(Field::LastUpdate);
                v.entities_dirty |= grew;
                if replace {
                    // Fields absent now show "unknown"; their entities stay (see
                    // `lifecycle`), and so does the last known position.
                    let position = v.state.position;
                    v.state = state;
                    v.state.position = v.state.position.or(position);
                } else {
                    v.state.merge(state);
                }
                if advances {
                    v.reported_at = Some(v.reported_at.map_or(reported, |r| r.max(reported)));
                }
                let last = v.reported_at.unwrap_or(reported);
                v.state.set(
                    Field::LastUpdate,
                    last.to_rfc3339_opts(SecondsFormat::Millis, true),
                );
                v.field_times.insert(Field::LastUpdate, last);
                v.reported_this_run.fields.insert(Field::LastUpdate);
                v.dirty = true;
                if !v.availability_told {
                    v.online = true;
                }
                self.info_dirty = true;
                self.check_stale_one(&vehicle);
                // Documents depend on the shape (and the info, synced when it comes): a
                // status that adds no field costs no rebuild.
                if grew {
                    self.sync_discovery(&vehicle, false);
                }
                self.publish_state(&vehicle);
                self.publish_availability(&vehicle, false);
            }
            Update::Availability { vehicle, online } => {
                if let Some(v) = self.vehicles.get_mut(&vehicle) {
                    v.online = online;
                    v.availability_told = true;
                    self.publish_availability(&vehicle, false);
                }
            }
            Update::Event { vehicle, event } => self.publish_event(&vehicle, event),
            Update::Roster(vehicles) => self.on_roster(owner, vehicles),
            Update::Counters(counters) => {
                self.connectors[owner].counters = counters;
                self.info_dirty = true;
            }
            Update::Recovered => {
                let slot = &mut self.connectors[owner];
                if slot.error.take().is_some() {
                    tracing::info!(event = "connector_recovered", connector = %slot.name, "connector works again");
                    self.info_dirty = true;
                }
            }
            Update::Health { links, error } => {
                let slot = &mut self.connectors[owner];
                slot.links = links;
                if let Some(err) = error {
                    let msg = format!("{}: {err}", slot.name);
                    slot.error = Some(err);
                    self.set_error(msg);
                }
                self.info_dirty = true;
            }
        }
    }
}
