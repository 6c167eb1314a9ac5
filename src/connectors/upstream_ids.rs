//! The one-to-one map between an upstream's own vehicle ids and the bridge's
//! ([`VehicleId::for_upstream`]). A connector keeps the upstream's id here beside the
//! bridge's and routes a command by looking it up, never by parsing it out of the text.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::VehicleId;

/// Why an upstream id has no vehicle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdRefused {
    #[error("empty vehicle id")]
    Empty,
    /// Another upstream id already has this vehicle id (a 40-bit hash collision, or a
    /// safe id chosen to look like another's hashed form).
    #[error("vehicle id {vehicle} is already taken by another upstream id")]
    Taken { vehicle: VehicleId },
    #[error("more than {0} vehicles")]
    Full(usize),
}

pub struct UpstreamIds {
    prefix: &'static str,
    by_vehicle: HashMap<VehicleId, Arc<str>>,
    limit: usize,
}

impl UpstreamIds {
    pub fn new(prefix: &'static str, limit: usize) -> UpstreamIds {
        UpstreamIds {
            prefix,
            by_vehicle: HashMap::new(),
            limit,
        }
    }

    /// The vehicle of `upstream_id`, remembered from now on.
    pub fn vehicle(&mut self, upstream_id: &str) -> Result<VehicleId, IdRefused> {
        let id = VehicleId::for_upstream(self.prefix, upstream_id).ok_or(IdRefused::Empty)?;
        match self.by_vehicle.get(&id) {
            Some(known) if &**known == upstream_id => Ok(id),
            Some(_) => Err(IdRefused::Taken { vehicle: id }),
            None if self.by_vehicle.len() >= self.limit => Err(IdRefused::Full(self.limit)),
            None => {
                self.by_vehicle.insert(id.clone(), upstream_id.into());
                Ok(id)
            }
        }
    }

    /// The vehicle of an upstream id already seen; mints none.
    pub fn known(&self, upstream_id: &str) -> Option<VehicleId> {
        let id = VehicleId::for_upstream(self.prefix, upstream_id)?;
        (self.upstream_id(&id) == Some(upstream_id)).then_some(id)
    }

    /// The upstream's own id of a vehicle it has reported.
    pub fn upstream_id(&self, vehicle: &VehicleId) -> Option<&str> {
        self.by_vehicle.get(vehicle).map(|s| &**s)
    }

    pub fn len(&self) -> usize {
        self.by_vehicle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_vehicle.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_both_ways_and_stay_one_to_one() {
        let mut ids = UpstreamIds::new("ex", 3);
        let plate = ids.vehicle("粤B 12.345:x").unwrap();
        assert_eq!(ids.upstream_id(&plate), Some("粤B 12.345:x"));
        assert_eq!(
            ids.vehicle("粤B 12.345:x").unwrap(),
            plate,
            "the same id again"
        );
        let other = ids.vehicle("京B 12.345:x").unwrap();
        assert_ne!(plate, other);
        assert_eq!(ids.upstream_id(&other), Some("京B 12.345:x"));
        assert_eq!(ids.vehicle(""), Err(IdRefused::Empty));
        assert_eq!(ids.known("粤B 12.345:x"), Some(plate.clone()));
        assert_eq!(ids.known("never seen"), None, "known() mints nothing");
        // A safe id that spells another's hashed form is refused, not merged.
        let lookalike = plate.as_str().strip_prefix("ex").unwrap().to_string();
        assert_eq!(
            ids.vehicle(&lookalike),
            Err(IdRefused::Taken {
                vehicle: plate.clone()
            })
        );
        ids.vehicle("third").unwrap();
        assert_eq!(ids.vehicle("fourth"), Err(IdRefused::Full(3)));
        assert_eq!(ids.len(), 3);
    }
}
