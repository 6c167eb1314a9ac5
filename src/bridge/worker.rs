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

/// Why a worker's vehicle left it: what its commands are answered with from then on.
#[derive(Debug, Clone)]
pub struct Gone {
    pub status: CommandStatus,
    pub reason: String,
}

impl Gone {
    /// The vehicle left the bridge.
    pub fn removed() -> Gone {
        Gone {
            status: CommandStatus::Rejected,
            reason: "the vehicle was removed from the bridge".into(),
        }
    }

    /// Another cluster instance owns the vehicle now.
    pub fn moved(to: &str) -> Gone {
        Gone {
            status: CommandStatus::Failed,
            reason: format!("moved to {to}"),
        }
    }
}

pub async fn run(
    vehicle: VehicleId,
    mut queue: mpsc::Receiver<Queued>,
    connector: mpsc::Sender<CommandRequest>,
    hub: mpsc::Sender<WorkerEvent>,
    command_timeout: Duration,
    mut gone: tokio::sync::watch::Receiver<Option<Gone>>,
) {
    while let Some(Queued {
        id,
        command,
        expires,
    }) = queue.recv().await
    {
        let left = gone.borrow().clone();
        if let Some(left) = left {
            // The vehicle left: what still waits is answered, never sent.
            let outcome = WorkerEvent::Outcome {
                vehicle: vehicle.clone(),
                id,
                command,
                status: left.status,
                reason: Some(left.reason),
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
        let ran = run_one(&vehicle, &id, &command, &connector, &hub, command_timeout);
        let (status, reason, reported_at) = tokio::select! {
            ran = ran => match ran {
                Some(outcome) => outcome,
                None => return,
            },
            // In flight when the vehicle left (moved to another instance): answered now;
            // whatever the connector says later goes nowhere.
            Some(left) = left_while(&mut gone) => (left.status, Some(left.reason), None),
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

/// Resolves when the vehicle leaves (`None` when nobody can tell any more: never).
async fn left_while(gone: &mut tokio::sync::watch::Receiver<Option<Gone>>) -> Option<Gone> {
    loop {
        if let Some(left) = gone.borrow_and_update().clone() {
            return Some(left);
        }
        if gone.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

type Outcome = (CommandStatus, Option<String>, Option<String>);

/// One command through the connector, to its final status (`None`: the hub is gone).
async fn run_one(
    vehicle: &VehicleId,
    id: &str,
    command: &Command,
    connector: &mpsc::Sender<CommandRequest>,
    hub: &mpsc::Sender<WorkerEvent>,
    command_timeout: Duration,
) -> Option<Outcome> {
    let deadline = Instant::now() + command_timeout;
    let (progress_tx, mut progress) = mpsc::channel(4);
    let request = CommandRequest {
        id: id.to_string(),
        vehicle: vehicle.clone(),
        command: command.clone(),
        progress: progress_tx,
    };
    let outcome = match timeout_at(deadline, connector.send(request)).await {
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
                                id: id.to_string(),
                                command: command.clone(),
                                status: CommandStatus::Accepted,
                                reason: None,
                                reported_at: None,
                            };
                            if hub.send(ev).await.is_err() {
                                return None;
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
    Some(outcome)
}
