//! The account's vehicle list: which cars the cloud has and who they are.

use super::*;

pub(super) async fn discover(shared: &Shared) -> Result<Vec<Listed>, ApiError> {
    let answer = shared
        .call(|t| Request {
            host: Host::Auth,
            method: Method::GET,
            path: "/device_platform/user/vehicle".into(),
            query: vec![("id", t.user_id.clone())],
            body: Body::None,
        })
        .await;
    let listed = match answer {
        Ok(doc) => parse_vehicle_list(&doc)?,
        // Configured VINs can be polled without the list (names are then unknown).
        Err(e) if !shared.cfg.vins.is_empty() && !matches!(e, ApiError::Refused(_)) => {
            tracing::warn!(event = "xchanger_vehicle_list_failed", error = %e, "using the configured VINs without the vehicle list");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    if shared.cfg.vins.is_empty() {
        if listed.is_empty() {
            tracing::warn!(
                event = "xchanger_no_vehicles",
                "the account has no vehicles"
            );
        }
        return Ok(listed);
    }
    Ok(shared
        .cfg
        .vins
        .iter()
        .map(|vin| {
            listed
                .iter()
                .find(|l| l.vin.eq_ignore_ascii_case(vin))
                .cloned()
                .unwrap_or(Listed {
                    vin: vin.clone(),
                    plate: None,
                    series: None,
                })
        })
        .collect())
}

/// `list[]{vin, plateNo, seriesName}`, at the top, under `data` or as `data` itself.
pub(super) fn parse_vehicle_list(doc: &Value) -> Result<Vec<Listed>, ApiError> {
    let list = doc
        .get("list")
        .or_else(|| data(doc).get("list"))
        .or_else(|| Some(data(doc)).filter(|d| d.is_array()))
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::BadAnswer("vehicle list without `list`".into()))?;
    let text = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(list
        .iter()
        .filter_map(|v| {
            let vin = text(v, "vin").filter(|vin| config::valid_vin(vin))?;
            Some(Listed {
                vin,
                plate: text(v, "plateNo"),
                series: text(v, "seriesName"),
            })
        })
        .collect())
}

pub(super) fn info(id: &VehicleId, listed: &Listed) -> VehicleInfo {
    let tail = &listed.vin[listed.vin.len().saturating_sub(6)..];
    VehicleInfo {
        id: id.clone(),
        name: listed
            .plate
            .clone()
            .or_else(|| listed.series.as_ref().map(|s| format!("Lynk & Co {s}")))
            .unwrap_or_else(|| format!("Lynk & Co {tail}")),
        manufacturer: "Lynk & Co".into(),
        model: listed.series.clone().map_or("Vehicle".into(), Into::into),
        reported_model: None,
        sw_version: None,
        custom_name: false,
        serial_number: Some(listed.vin.clone()),
        capabilities: vec![
            Capability::Lock,
            Capability::Engine,
            Capability::HornAndLights,
            Capability::FlashLights,
            Capability::Horn,
            Capability::Refresh,
            Capability::Polling,
            Capability::PollIntervals {
                min: crate::connectors::polling::MIN_MINUTES,
                max: crate::connectors::polling::MAX_MINUTES,
            },
        ]
        .into(),
        event_types: Default::default(),
    }
}
