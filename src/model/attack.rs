//! MITRE ATT&CK for ICS techniques used by the detectors and the correlator.
//!
//! A statistical finding cannot prove intent, so each technique is the most likely
//! reading of what the detector saw, as laid out in the design's scenario table.

use crate::model::vocabulary::MetricClass;
use crate::model::Technique;

/// T0804 Block Reporting Message (a BACnet DeviceCommunicationControl silencing a
/// device).
pub const BLOCK_REPORTING_MESSAGE: Technique = Technique {
    id: "T0804",
    name: "Block Reporting Message",
};
/// T0816 Device Restart/Shutdown (a BACnet ReinitializeDevice).
pub const DEVICE_RESTART_SHUTDOWN: Technique = Technique {
    id: "T0816",
    name: "Device Restart/Shutdown",
};
/// T0814 Denial of Service.
pub const DENIAL_OF_SERVICE: Technique = Technique {
    id: "T0814",
    name: "Denial of Service",
};
/// T0866 Exploitation of Remote Services.
pub const EXPLOITATION_OF_REMOTE_SERVICES: Technique = Technique {
    id: "T0866",
    name: "Exploitation of Remote Services",
};
/// T0815 Denial of View.
pub const DENIAL_OF_VIEW: Technique = Technique {
    id: "T0815",
    name: "Denial of View",
};
/// T0831 Manipulation of Control.
pub const MANIPULATION_OF_CONTROL: Technique = Technique {
    id: "T0831",
    name: "Manipulation of Control",
};
/// T0832 Manipulation of View.
pub const MANIPULATION_OF_VIEW: Technique = Technique {
    id: "T0832",
    name: "Manipulation of View",
};
/// T0836 Modify Parameter.
pub const MODIFY_PARAMETER: Technique = Technique {
    id: "T0836",
    name: "Modify Parameter",
};
/// T0846 Remote System Discovery.
pub const REMOTE_SYSTEM_DISCOVERY: Technique = Technique {
    id: "T0846",
    name: "Remote System Discovery",
};
/// T0855 Unauthorized Command Message.
pub const UNAUTHORIZED_COMMAND: Technique = Technique {
    id: "T0855",
    name: "Unauthorized Command Message",
};
/// T0856 Spoof Reporting Message.
pub const SPOOF_REPORTING: Technique = Technique {
    id: "T0856",
    name: "Spoof Reporting Message",
};

/// The technique a change in a process value most likely means: a moved setpoint is a
/// modified parameter, a flipped breaker an unauthorised command, anything else a
/// manipulation of control of the physical process.
pub fn for_process_change(metric: &str, class: Option<MetricClass>) -> Technique {
    match (metric, class) {
        (_, Some(MetricClass::Setpoint)) => MODIFY_PARAMETER,
        ("breaker_closed", _) => UNAUTHORIZED_COMMAND,
        _ => MANIPULATION_OF_CONTROL,
    }
}
