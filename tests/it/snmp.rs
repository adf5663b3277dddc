//! The simulated facility's UPS units and PDUs read over SNMP (with the UPS traps) by
//! `wattchdog run`: a forced bypass is detected as over Modbus, and as in a replay of
//! the capture the simulator wrote.

use crate::modbus::served_run_alerts_like_a_replay;
use crate::support::free_udp_port;

#[test]
fn run_over_snmp_with_traps_detects_a_forced_bypass_like_a_replay() {
    let trap_to = format!("127.0.0.1:{}", free_udp_port());
    let (report, live, _) = served_run_alerts_like_a_replay(
        "ups-forced-bypass",
        &["--serve-snmp", "127.0.0.1:0", "--snmp-trap-to", &trap_to],
        ("ups-1", "ups"),
    );
    // Over SNMP the run reads the UPS in UPS-MIB's units (whole volts, watts), not the
    // capture's values, so the detectors beside the cause may differ from the replay's;
    // what the live run raises must still all be about the attacked UPS.
    assert!(live.iter().all(|(d, _)| d == "ups-1"), "{live:?}");
    let snmp = report["snmp"].as_array().expect("SNMP devices polled");
    assert_eq!(snmp.len(), 4, "two UPS units and two PDUs: {snmp:?}");
    for d in snmp {
        assert!(d["good"].as_u64().unwrap() > 0, "{d}");
    }
    // The bypass and its end arrived as notifications too.
    let traps = &report["traps"];
    assert!(traps["readings"].as_u64().unwrap() >= 1, "{traps}");
    assert_eq!(traps["unknown_source"], 0, "{traps}");
    assert_eq!(traps["bad_community"], 0, "{traps}");
}
