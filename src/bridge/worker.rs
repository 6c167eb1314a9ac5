//! One task per vehicle that has received a command: it runs that vehicle's commands one
//! at a time, in order, and turns whatever the connector does (or fails to do) into
//! exactly one final outcome per command.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use crate::connector::CommandRequest;
use crate::model::{Command, CommandProgress, CommandStatus, VehicleId};

/// A validated command waiting for its turn.
#[derive(Debug)]
pub struct Queued {
    pub id: String,
    pub command: Command,
    /// The sender's MQTT 5 message expiry: past it, the command is not sent.
    pub expires: Option<std::time::Instant>,
}

/// What a worker tells the hub.
#[derive(Debug)]
pub enum WorkerEvent {
    Started {
        vehicle: VehicleId,
        command: Command,
    },
    Outcome {
        vehicle: VehicleId,
        id: String,
        command: Command,
        status: CommandStatus,
        reason: Option<String>,
        /// For a refresh: when the vehicle made the report that answered it.
        reported_at: Option<String>,
    },
}

pub async fn run(
    vehicle: VehicleId,
    mut queue: mpsc::Receiver<Queued>,
    connector: mpsc::Sender<CommandRequest>,
    hub: mpsc::Sender<WorkerEvent>,
    command_timeout: Duration,
    forgotten: tokio_util::sync::CancellationToken,
) {
    while let Some(Queued {
        id,
        command,
        expires,
    }) = queue.recv().await
    {
        if forgotten.is_cancelled() {
            // The vehicle left the bridge: what still waits is answered, never sent.
            let outcome = WorkerEvent::Outcome {
                vehicle: vehicle.clone(),
                id,
                command,
                status: CommandStatus::Rejected,
                reason: Some("the vehicle was removed from the bridge".into()),
                reported_at: None,
            };
            if hub.send(outcome).await.is_err() {
                return;
            }
            continue;
        }
        if expires.is_some_and(|t| std::time::Instant::now() >= t) {
            let outcome = WorkerEvent::Outcome {
                vehicle: vehicle.clone(),
                id,
                command,
                status: CommandStatus::Rejected,
                reason: Some("expired while queued (its MQTT message expiry passed)".into()),
                reported_at: None,
            };
            if hub.send(outcome).await.is_err() {
                return;
            }
            continue;
        }
        let started = WorkerEvent::Started {
            vehicle: vehicle.clone(),
            command: command.clone(),
        };
        if hub.send(started).await.is_err() {
            return;
        }
        let deadline = Instant::now() + command_timeout;
        let (progress_tx, mut progress) = mpsc::channel(4);
        let request = CommandRequest {
            id: id.clone(),
            vehicle: vehicle.clone(),
            command: command.clone(),
            progress: progress_tx,
        };
        let (status, reason, reported_at) =
            match timeout_at(deadline, connector.send(request)).await {
                Err(_) => (
                    CommandStatus::Timeout,
                    Some("connector busy: command not taken in time".to_string()),
                    None,
                ),
                Ok(Err(_)) => (
                    CommandStatus::Failed,
                    Some("connector has stopped".to_string()),
                    None,
                ),
                Ok(Ok(())) => {
                    let mut accepted = false;
                    loop {
                        match timeout_at(deadline, progress.recv()).await {
                            Err(_) => {
                                break (
                                    CommandStatus::Timeout,
                                    Some(format!(
                                        "no confirmation within {}",
                                        humantime::format_duration(command_timeout)
                                    )),
                                    None,
                                )
                            }
                            Ok(None) => {
                                break (
                                    CommandStatus::Failed,
                                    Some("connector dropped the command".to_string()),
                                    None,
                                )
                            }
                            Ok(Some(CommandProgress::Accepted)) => {
                                if !accepted {
                                    accepted = true;
                                    let ev = WorkerEvent::Outcome {
                                        vehicle: vehicle.clone(),
                                        id: id.clone(),
                                        command: command.clone(),
                                        status: CommandStatus::Accepted,
                                        reason: None,
                                        reported_at: None,
                                    };
                                    if hub.send(ev).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Ok(Some(CommandProgress::Succeeded)) => {
                                break (CommandStatus::Succeeded, None, None)
                            }
                            Ok(Some(CommandProgress::SucceededBecause(why))) => {
                                break (CommandStatus::Succeeded, Some(why), None)
                            }
                            Ok(Some(CommandProgress::Failed(reason))) => {
                                break (CommandStatus::Failed, Some(reason), None)
                            }
                            Ok(Some(CommandProgress::TimedOut(reason))) => {
                                break (CommandStatus::Timeout, Some(reason), None)
                            }
                            Ok(Some(CommandProgress::Refused(reason))) => {
                                break (CommandStatus::Rejected, Some(reason), None)
                            }
                            Ok(Some(CommandProgress::Fresh { reported_at })) => {
                                let why = format!("the vehicle reported at {reported_at}");
                                break (CommandStatus::Succeeded, Some(why), Some(reported_at));
                            }
                        }
                    }
                }
            };
        let ev = WorkerEvent::Outcome {
            vehicle: vehicle.clone(),
            id,
            command,
            status,
            reason,
            reported_at,
        };
        if hub.send(ev).await.is_err() {
            return;
        }
    }
}
