//! Commands: what each becomes on the cloud (telematics body), sending it, and the
//! data plan read beside them.

use super::*;

/// What a command becomes on the cloud, and the state that proves it done.
#[derive(Debug, PartialEq)]
pub(super) struct Telematics {
    pub(super) service: &'static str,
    /// `start`, or `stop` for RES.
    pub(super) command: &'static str,
    pub(super) params: Vec<(&'static str, String)>,
    /// `None`: nothing in the status shows it (horn, lights): the cloud's acknowledgement
    /// is all there is, and the result says so.
    pub(super) expect: Option<(Field, crate::model::Value)>,
}

pub(super) fn telematics(cmd: &Command, unlock_window_min: u32) -> Option<Telematics> {
    let t = |service, command, params, expect| {
        Some(Telematics {
            service,
            command,
            params,
            expect,
        })
    };
    let lock = |s: &str| Some((Field::Lock, crate::model::Value::from(s)));
    let engine = |on: bool| Some((Field::EngineRunning, crate::model::Value::from(on)));
    let rhl = |v: &str| vec![("rhl", v.to_string())];
    match cmd {
        Command::Lock => t("RDL", "start", vec![], lock(lock_state::LOCKED)),
        Command::Unlock => t(
            "RDU",
            "start",
            vec![("time.window", unlock_window_min.to_string())],
            lock(lock_state::UNLOCKED),
        ),
        Command::EngineStart => t("RES", "start", vec![], engine(true)),
        Command::EngineStop => t("RES", "stop", vec![], engine(false)),
        Command::HornAndLights => t("RHL", "start", rhl("horn-light-flash"), None),
        Command::FlashLights => t("RHL", "start", rhl("light-flash"), None),
        Command::Horn => t("RHL", "start", rhl("horn-flash"), None),
        _ => None,
    }
}

/// The telematics body (docs/protocols/xchanger.md, "Remote control"), exactly as the app
/// sends it.
pub fn telematics_body(
    service_id: &str,
    command: &str,
    params: &[(&str, String)],
    user_id: &str,
    timestamp_ms: i64,
) -> Value {
    json!({
        "command": command,
        "creator": "tc",
        "operationScheduling": {"duration": 0, "interval": 0, "occurs": 1, "recurrentOperation": false},
        "serviceId": service_id,
        "serviceParameters": params.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
        "timestamp": timestamp_ms,
        "userId": user_id,
    })
}

/// Sends one command; `Some` when the cloud accepted it and a status must confirm it.
pub(super) async fn execute(
    shared: &Shared,
    vin: &str,
    req: CommandRequest,
    last_update: Option<i64>,
) -> Option<Pending> {
    let Some(Telematics {
        service,
        command,
        params,
        expect,
    }) = telematics(&req.command, shared.cfg.unlock_window_min)
    else {
        let _ = req
            .progress
            .send(CommandProgress::Failed("not supported by xchanger".into()))
            .await;
        return None;
    };
    shared
        .counters
        .commands_sent
        .fetch_add(1, Ordering::Relaxed);
    let result = shared
        .call(|t| Request {
            host: Host::Data,
            method: Method::PUT,
            path: shared.path(
                "/geelyTCAccess/tcservices/vehicle/telematics",
                "/remote-control/vehicle/telematics",
                vin,
            ),
            query: vec![],
            body: Body::Json(telematics_body(
                service,
                command,
                &params,
                &t.user_id,
                chrono::Utc::now().timestamp_millis(),
            )),
        })
        .await;
    match result {
        Ok(_) if expect.is_none() => {
            tracing::info!(event = "xchanger_command_accepted", vehicle = %req.vehicle, command = %req.command.name(), service, "command accepted by the cloud");
            let _ = req
                .progress
                .send(CommandProgress::SucceededBecause(
                    "the cloud acknowledged it; horn and lights leave nothing in the car's status to confirm".into(),
                ))
                .await;
            None
        }
        Ok(_) => {
            tracing::info!(event = "xchanger_command_accepted", vehicle = %req.vehicle, command = %req.command.name(), service, "command accepted by the cloud");
            let _ = req.progress.send(CommandProgress::Accepted).await;
            Some(Pending {
                progress: req.progress,
                baseline: last_update,
                expect,
                refresh: false,
            })
        }
        Err(e) => {
            shared
                .counters
                .commands_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event = "xchanger_command_failed", vehicle = %req.vehicle, command = %req.command.name(), error = %e, "command refused");
            let _ = req
                .progress
                .send(CommandProgress::Failed(e.to_string()))
                .await;
            None
        }
    }
}

/// Asks the cloud to wake the car for a fresh position (`PAI`, operation 4, pai 1;
/// docs/protocols/xchanger.md, "Refresh"). Its answer is only an acknowledgement: the
/// fresh report shows in the status read after it, so a refusal is logged and the
/// refresh goes on with the reads.
pub(super) async fn wake_for_position(shared: &Shared, vin: &str, id: &VehicleId) {
    shared
        .counters
        .commands_sent
        .fetch_add(1, Ordering::Relaxed);
    let result = shared
        .call(|t| Request {
            host: Host::Data,
            method: Method::PUT,
            path: shared.path(
                "/geelyTCAccess/tcservices/vehicle/telematics",
                "/remote-control/vehicle/telematics",
                vin,
            ),
            query: vec![],
            body: Body::Json(telematics_body(
                "PAI",
                "start",
                &[("operation", "4".into()), ("pai", "1".into())],
                &t.user_id,
                chrono::Utc::now().timestamp_millis(),
            )),
        })
        .await;
    match result {
        Ok(_) => {
            tracing::info!(event = "xchanger_wakeup_sent", vehicle = %id, "asked the car for a fresh position")
        }
        Err(e) => {
            shared
                .counters
                .commands_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event = "xchanger_wakeup_failed", vehicle = %id, error = %e,
                "the cloud did not take the position wake-up; reading the status anyway")
        }
    }
}

/// `flowinfo`: KiB (or bytes, as configured) → MiB, the basic package's end as the
/// plan's expiry.
pub fn data_plan_state(doc: &Value, unit: DataUnit) -> VehicleState {
    let d = if doc.get("sum").is_some() {
        doc
    } else {
        data(doc)
    };
    let mut st = VehicleState::default();
    let per_mib = match unit {
        DataUnit::Kib => 1024.0,
        DataUnit::Bytes => 1_048_576.0,
    };
    let mib = |k: &str| crate::protocol::json::number(d.get(k)).map(|v| v / per_mib);
    for (key, field) in [
        ("used", Field::DataUsed),
        ("left", Field::DataLeft),
        ("sum", Field::DataTotal),
    ] {
        if let Some(v) = mib(key) {
            st.set_f64(field, v);
        }
    }
    if let Some(t) = d
        .get("basic_package")
        .and_then(|b| b.get("limit_time"))
        .and_then(Value::as_i64)
        .and_then(chrono::DateTime::from_timestamp_millis)
    {
        st.set(
            Field::DataExpiry,
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    }
    st
}

pub(super) async fn data_plan(shared: &Shared, id: &VehicleId) {
    let iccid = shared.cfg.iccid.clone();
    let result = shared
        .call(|_| Request {
            host: Host::Auth,
            method: Method::GET,
            path: "/api/v1/flowinfo".into(),
            query: vec![("type", "iccid".into()), ("iccid", iccid.clone())],
            body: Body::None,
        })
        .await;
    match result {
        Ok(doc) => {
            let st = data_plan_state(&doc, shared.cfg.data_plan_unit);
            if st.values.is_empty() {
                shared.counters.bad_answers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    event = "xchanger_data_plan_malformed",
                    "flowinfo answer without sum/left/used"
                );
            } else {
                shared.updates.merge_state(id.clone(), st).await;
            }
        }
        Err(e) => {
            tracing::warn!(event = "xchanger_data_plan_failed", error = %e, "could not read the data plan")
        }
    }
}
