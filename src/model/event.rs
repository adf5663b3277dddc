//! What the pipeline consumes: readings after interning, commands, and the Modbus
//! exchanges a packet capture shows.

use crate::model::points::{DeviceId, PointId};
use crate::model::{Command, Quality, Ts};
use std::sync::Arc;

/// One event after interning: what the pipeline consumes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A reading of a registered point.
    Sample {
        /// Event time.
        ts: Ts,
        /// Point.
        point: PointId,
        /// Value (finite).
        value: f64,
        /// Quality.
        quality: Quality,
    },
    /// A control action.
    Command(Box<Command>),
    /// A Modbus exchange seen on the wire (packet captures only).
    Traffic(Box<Traffic>),
}

/// What the wire showed of one Modbus exchange (or of a frame that is not one), for the
/// protocol detector. Not part of the capture formats: only packet captures have it.
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    /// Event time (of the response, or of the moment the exchange was judged).
    pub ts: Ts,
    /// The server and unit id as a device.
    pub device: DeviceId,
    /// Client address.
    pub client: Arc<str>,
    /// Function code of the request.
    pub function: u8,
    /// First address (diagnostics: sub-function; 43: MEI type).
    pub address: u16,
    /// Registers or bits.
    pub count: u16,
    /// How it ended.
    pub outcome: Outcome,
}

/// How a Modbus exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A fitting response.
    Answered,
    /// An exception response with this code.
    Exception(u8),
    /// No response within the timeout, or before the connection closed.
    Unanswered,
    /// A response that no outstanding request asked for: spoofing or a man in the middle.
    Unsolicited,
    /// A frame that breaks the protocol (the reason's report key).
    Malformed(&'static str),
}

impl Event {
    /// Event time.
    pub fn ts(&self) -> Ts {
        match self {
            Self::Sample { ts, .. } => *ts,
            Self::Command(c) => c.ts,
            Self::Traffic(t) => t.ts,
        }
    }
}
