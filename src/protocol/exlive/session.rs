//! One EXLIVE link's session as the server sees it, without I/O: messages and the clock
//! go in; what to do with each comes out (check a login, answer and close, hand a
//! message on, drop one for a vehicle the account may not report). The server
//! (`connectors/exlive/server.rs`) reads, writes, checks credentials and publishes.
//!
//! docs/protocols/exlive.md, "Login sequence": a link logs in first (cmd 1000, answered
//! by an 8000 ack with `result` "success" or "fail"); a platform that stays silent past
//! the heartbeat timeout is gone.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use super::Message;

/// What a message means on this link.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Check these credentials, then call `logged_in` (or answer `refused()` and close).
    Login { name: String, pass: String },
    /// Answer with this and close: a message before login.
    Refuse(Message),
    /// Hand the message on (publish, route, log out).
    Deliver(Message),
    /// Dropped: a message for a vehicle this account may not report.
    NotAllowed(String),
    /// Nothing to do (a repeated login on a logged-in link).
    Ignore,
}

pub struct Session {
    /// `None` until logged in; then the vehicles the account may speak for (empty: any).
    allowed: Option<HashSet<String>>,
    idle: Duration,
    deadline: Instant,
}

impl Session {
    /// A new link: it must log in within `idle` (the heartbeat timeout), and then say
    /// something at least that often.
    pub fn new(idle: Duration, now: Instant) -> Session {
        Session {
            allowed: None,
            idle,
            deadline: now + idle,
        }
    }

    pub fn logged_in(&self) -> bool {
        self.allowed.is_some()
    }

    /// The link is dead past this.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn on_message(&mut self, msg: Message, now: Instant) -> Step {
        let Some(allowed) = &self.allowed else {
            return match msg {
                Message::Login { name, pass, .. } => Step::Login { name, pass },
                other => Step::Refuse(Message::Ack {
                    cmd: other.cmd().to_string(),
                    result: "not logged in".into(),
                }),
            };
        };
        self.deadline = now + self.idle;
        if let Message::Login { .. } = msg {
            return Step::Ignore;
        }
        if let Some(id) = vehicle_of(&msg) {
            let id = id.trim();
            if !allowed.is_empty() && !allowed.contains(id) {
                return Step::NotAllowed(id.to_string());
            }
        }
        Step::Deliver(msg)
    }

    /// The credentials opened an account that may report `vehicles` (empty: any): the
    /// answer to send.
    pub fn logged_in_as(&mut self, vehicles: &[String], now: Instant) -> Message {
        self.allowed = Some(vehicles.iter().map(|v| v.trim().to_string()).collect());
        self.deadline = now + self.idle;
        Message::Ack {
            cmd: "1000".into(),
            result: "success".into(),
        }
    }

    /// The answer to a refused login (the link then closes).
    pub fn refused() -> Message {
        Message::Ack {
            cmd: "1000".into(),
            result: "fail".into(),
        }
    }
}

/// The vehicle a message speaks for, if it speaks for one.
fn vehicle_of(msg: &Message) -> Option<&str> {
    match msg {
        Message::Position(p) => Some(&p.id),
        Message::Vehicle { id, .. } => Some(id),
        Message::PassthroughData { terminalid, .. } => Some(terminalid),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(name: &str) -> Message {
        Message::Login {
            name: name.into(),
            pass: "secret".into(),
            ver: String::new(),
            kind: String::new(),
            mode: String::new(),
        }
    }

    fn vehicle(id: &str) -> Message {
        Message::Vehicle {
            id: id.into(),
            code: String::new(),
            sim: String::new(),
        }
    }

    #[test]
    fn nothing_but_a_login_is_taken_before_login() {
        let now = Instant::now();
        let mut s = Session::new(Duration::from_secs(60), now);
        assert_eq!(
            s.on_message(Message::Heartbeat, now),
            Step::Refuse(Message::Ack {
                cmd: Message::Heartbeat.cmd().into(),
                result: "not logged in".into()
            })
        );
        assert!(!s.logged_in());
        assert_eq!(
            s.on_message(login("fleet"), now),
            Step::Login {
                name: "fleet".into(),
                pass: "secret".into()
            }
        );
        assert_eq!(
            Session::refused(),
            Message::Ack {
                cmd: "1000".into(),
                result: "fail".into()
            }
        );
    }

    #[test]
    fn an_account_reports_only_its_vehicles_and_silence_ends_the_link() {
        let now = Instant::now();
        let idle = Duration::from_secs(60);
        let mut s = Session::new(idle, now);
        assert_eq!(
            s.deadline(),
            now + idle,
            "login within the heartbeat timeout"
        );
        let later = now + Duration::from_secs(30);
        let ack = s.logged_in_as(&[" A1 ".into()], later);
        assert!(matches!(ack, Message::Ack { ref result, .. } if result == "success"));
        assert_eq!(s.deadline(), later + idle);
        assert!(matches!(
            s.on_message(vehicle("A1"), later),
            Step::Deliver(_)
        ));
        assert_eq!(
            s.on_message(vehicle("B2"), later),
            Step::NotAllowed("B2".into())
        );
        assert_eq!(s.on_message(login("again"), later), Step::Ignore);
        // Every message moves the deadline.
        let much_later = later + Duration::from_secs(50);
        s.on_message(Message::Heartbeat, much_later);
        assert_eq!(s.deadline(), much_later + idle);
        // An account with no list may report any vehicle.
        let mut any = Session::new(idle, now);
        any.logged_in_as(&[], now);
        assert!(matches!(
            any.on_message(vehicle("Z9"), now),
            Step::Deliver(_)
        ));
    }
}
