//! Where a connection is in its life, from connect to goodbye.

use std::time::{Duration, Instant};

/// How long after the shutdown deadline the retained `off` may still wait
/// for its PUBACK and the DISCONNECT for the broker to close.
pub const GOODBYE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for CONNACK.
    Connecting,
    /// Connected: values, statuses and answers flow.
    Online,
    /// Shutdown asked: what is in flight, taken requests and the outbox
    /// are finished until `deadline`; nothing new is read.
    Draining { deadline: Instant },
    /// The retained `off` is handed to the client; `acked` once its PUBACK
    /// came.
    Goodbye { deadline: Instant, acked: bool },
    /// DISCONNECT is handed to the client: the event loop ends, or the
    /// session stops at `deadline` + [`GOODBYE_GRACE`].
    Disconnecting { deadline: Instant, acked: bool },
}

/// What became of the retained `off` status a stopping session owes the
/// broker (without it, Thing+ keeps the last status: `err` from the will
/// when the connection broke, else `on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goodbye {
    NotSent,
    Unacknowledged,
    Acknowledged,
}

impl Phase {
    pub fn online(self) -> bool {
        !matches!(self, Phase::Connecting)
    }

    /// Statuses and values are still sent (the `off` is not said yet).
    pub fn sends(self) -> bool {
        matches!(self, Phase::Online | Phase::Draining { .. })
    }

    /// Shutdown was asked while connected.
    pub fn stopping(self) -> bool {
        !matches!(self, Phase::Connecting | Phase::Online)
    }

    pub fn goodbye(self) -> Goodbye {
        match self {
            Phase::Connecting | Phase::Online | Phase::Draining { .. } => Goodbye::NotSent,
            Phase::Goodbye { acked, .. } | Phase::Disconnecting { acked, .. } => {
                if acked {
                    Goodbye::Acknowledged
                } else {
                    Goodbye::Unacknowledged
                }
            }
        }
    }

    /// The PUBACK of the `off` came.
    pub fn off_acknowledged(&mut self) {
        if let Phase::Goodbye { acked, .. } | Phase::Disconnecting { acked, .. } = self {
            *acked = true;
        }
    }
}
