//! A datagram on the trap port (`[snmp] trap_listen`): anyone on the network can send
//! one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wattchdog::protocol::mib;
use wattchdog::source::snmp;

fuzz_target!(|data: &[u8]| {
    if let Some(n) = snmp::notification(data) {
        let map = mib::named("ups-mib").expect("built-in map");
        for (metric, value) in map.trap_readings(&n.trap, &n.oids) {
            assert!(!metric.is_empty() && value.is_finite());
        }
    }
});
