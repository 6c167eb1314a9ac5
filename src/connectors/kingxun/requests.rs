//! What a proven device's requests mean for its vehicle, and the RespCode and body sent
//! back. (What a link that has not proven its key is told is the session's:
//! `protocol/kingxun/session.rs`.)

use std::sync::atomic::Ordering;

use super::{charge_event, device_event, status_state, trip_update, vehicle_id, Shared};
use crate::connector::Update;
use crate::model::{Field, VehicleState};
use crate::protocol::kingxun::{id, ChargeDone, Events, Frame, RangeQuery, Status, Traffic, Trip};

use super::server::may_log;
use crate::protocol::kingxun::session::{RESP_BAD_PARAMETER, RESP_OK, RESP_REJECTED};

/// Acts on one request from a proven device (its body opened by the session); returns
/// the RespCode and body to answer with.
pub(super) async fn handle_request(
    shared: &Shared,
    dev_id: u32,
    frame: &Frame,
    body: Vec<u8>,
    model_known: &mut bool,
    in_a_row: u32,
) -> (u32, Vec<u8>) {
    let vid = vehicle_id(dev_id);
    let bad = |err: crate::protocol::kingxun::BodyError| {
        shared.counters.bad_bodies.fetch_add(1, Ordering::Relaxed);
        if may_log(shared, in_a_row) {
            tracing::warn!(event = "kingxun_bad_body", dev_id, msg_id = frame.header.msg_id, error = %err, "malformed body refused");
        }
        (RESP_BAD_PARAMETER, Vec::new())
    };
    let updates = &shared.updates;
    match frame.header.msg_id {
        id::STATUS => match Status::decode(&body) {
            Ok(s) => {
                if !*model_known {
                    *model_known = true;
                    let _ = updates
                        .send(Update::Vehicle(shared.info(dev_id, None, Some(s.dev_type))))
                        .await;
                }
                updates.merge_state(vid, status_state(&s)).await;
                (RESP_OK, Vec::new())
            }
            Err(e) => bad(e),
        },
        id::TRAFFIC => match Traffic::decode(&body) {
            Ok(t) => {
                let mut s = VehicleState::default();
                s.set_f64(Field::DataUsed, f64::from(t.used_kib) / 1024.0);
                updates.merge_state(vid, s).await;
                (RESP_OK, Vec::new())
            }
            Err(e) => bad(e),
        },
        id::RANGE => match RangeQuery::decode(&body) {
            Ok(q) => {
                let mut s = VehicleState::default();
                s.set_f64(
                    Field::Range,
                    (shared.config.range_full_km * f64::from(q.soc.min(100)) / 100.0 * 10.0)
                        .round()
                        / 10.0,
                );
                updates.merge_state(vid, s).await;
                (RESP_OK, shared.link_settings.range.encode())
            }
            Err(e) => bad(e),
        },
        id::TRIP => match Trip::decode(&body) {
            Ok(t) => {
                let (state, event) = trip_update(&t, shared.tz);
                updates.merge_state(vid.clone(), state).await;
                updates.event(vid, event).await;
                (RESP_OK, Vec::new())
            }
            Err(e) => bad(e),
        },
        id::CHARGE_DONE => match ChargeDone::decode(&body) {
            Ok(c) => {
                updates.event(vid, charge_event(&c, shared.tz)).await;
                (RESP_OK, Vec::new())
            }
            Err(e) => bad(e),
        },
        id::EVENTS => match Events::decode(&body) {
            Ok(evs) => {
                for e in &evs.events {
                    // 8 tipped over, 10 tipped over while riding.
                    if e.kind == 8 || e.kind == 10 {
                        let mut s = VehicleState::default();
                        s.set(Field::Fallen, true);
                        updates.merge_state(vid.clone(), s).await;
                    }
                    updates.event(vid.clone(), device_event(e, shared.tz)).await;
                }
                (RESP_OK, Vec::new())
            }
            Err(e) => bad(e),
        },
        other => {
            shared.counters.unknown_msgs.fetch_add(1, Ordering::Relaxed);
            if may_log(shared, in_a_row) {
                tracing::warn!(
                    event = "kingxun_unknown_msg",
                    dev_id,
                    msg_id = other,
                    "unknown MsgId; rejected"
                );
            }
            (RESP_REJECTED, Vec::new())
        }
    }
}
