//! Answers to a registered device's requests (and to a link that has not proven its
//! key): what each message means for the vehicle, and the RespCode and body sent back.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use rand::Rng;
use tokio::net::tcp::OwnedWriteHalf;

use super::{charge_event, device_event, status_state, trip_update, vehicle_id, Core};
use crate::connector::Update;
use crate::model::{Field, VehicleState};
use crate::protocol::kingxun::{
    id, ChargeDone, Events, Frame, RangeAnswer, RangeQuery, Register, RegisterAck, Status, Traffic,
    Trip,
};

use super::server::*;

/// What an unproven link is told: the usual answer, computed without publishing anything.
pub(super) fn unproven_answer(core: &Core, frame: &Frame) -> (u32, Vec<u8>) {
    match frame.header.msg_id {
        id::RANGE => match RangeQuery::decode(&frame.body) {
            Ok(_) => (
                RESP_OK,
                RangeAnswer {
                    max_range_m: (core.config.range_full_km * 1000.0).clamp(0.0, u32::MAX as f64)
                        as u32,
                    charge_notify_soc: core.config.charge_notify_soc,
                    soc_min: core.config.soc_min,
                }
                .encode(),
            ),
            Err(_) => (RESP_BAD_PARAMETER, Vec::new()),
        },
        _ => (RESP_OK, Vec::new()),
    }
}

/// What a first 1001 says. Any body is accepted, as kxSvr accepts any; an encrypted one
/// (a device has no IV yet) carries nothing readable.
pub(super) fn registration_body(frame: &Frame) -> Register {
    if frame.header.crypt {
        Register::default()
    } else {
        Register::decode_lenient(&frame.body)
    }
}

/// Answers a 1001 with `session_id` and a fresh IV; `None` when the write failed.
pub(super) async fn answer_register(
    wr: &mut OwnedWriteHalf,
    seq: u16,
    session_id: u32,
) -> Option<[u8; 16]> {
    let iv = rand::rng().random::<[u8; 16]>();
    let ack = RegisterAck { session_id, iv }.encode();
    write_frame(
        wr,
        &Frame::response(id::REGISTER, seq, RESP_OK, false, Bytes::from(ack)),
    )
    .await
    .ok()
    .map(|_| iv)
}

/// Handles one request from a registered device; returns the RespCode and body.
pub(super) async fn handle_request(
    core: &Core,
    session: &Session,
    frame: &Frame,
    model_known: &mut bool,
    in_a_row: u32,
) -> (u32, Vec<u8>) {
    let dev_id = session.dev_id;
    let vid = vehicle_id(dev_id);
    let body = match session.open_body(frame) {
        Ok(b) => b,
        Err(err) => {
            core.counters
                .decrypt_failures
                .fetch_add(1, Ordering::Relaxed);
            if may_log(core, in_a_row) {
                tracing::warn!(event = "kingxun_decrypt_failed", dev_id, msg_id = frame.header.msg_id, error = %err, "body dropped");
            }
            return (RESP_REJECTED, Vec::new());
        }
    };
    let bad = |err: crate::protocol::kingxun::BodyError| {
        core.counters.bad_bodies.fetch_add(1, Ordering::Relaxed);
        if may_log(core, in_a_row) {
            tracing::warn!(event = "kingxun_bad_body", dev_id, msg_id = frame.header.msg_id, error = %err, "malformed body refused");
        }
        (RESP_BAD_PARAMETER, Vec::new())
    };
    let updates = &core.updates;
    match frame.header.msg_id {
        id::STATUS => match Status::decode(&body) {
            Ok(s) => {
                if !*model_known {
                    *model_known = true;
                    let _ = updates
                        .send(Update::Vehicle(core.info(dev_id, None, Some(s.dev_type))))
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
                let full_m = core.config.range_full_km * 1000.0;
                let mut s = VehicleState::default();
                s.set_f64(
                    Field::Range,
                    (core.config.range_full_km * f64::from(q.soc.min(100)) / 100.0 * 10.0).round()
                        / 10.0,
                );
                updates.merge_state(vid, s).await;
                let answer = RangeAnswer {
                    max_range_m: full_m.clamp(0.0, u32::MAX as f64) as u32,
                    charge_notify_soc: core.config.charge_notify_soc,
                    soc_min: core.config.soc_min,
                };
                (RESP_OK, answer.encode())
            }
            Err(e) => bad(e),
        },
        id::TRIP => match Trip::decode(&body) {
            Ok(t) => {
                let (state, event) = trip_update(&t, core.tz);
                updates.merge_state(vid.clone(), state).await;
                updates.event(vid, event).await;
                (RESP_OK, Vec::new())
            }
            Err(e) => bad(e),
        },
        id::CHARGE_DONE => match ChargeDone::decode(&body) {
            Ok(c) => {
                updates.event(vid, charge_event(&c, core.tz)).await;
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
                    updates.event(vid.clone(), device_event(e, core.tz)).await;
                }
                (RESP_OK, Vec::new())
            }
            Err(e) => bad(e),
        },
        other => {
            core.counters.unknown_msgs.fetch_add(1, Ordering::Relaxed);
            if may_log(core, in_a_row) {
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
