//! A datagram to a simulated SNMP agent (`simulate --serve-snmp`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wattchdog::protocol::mib;
use wattchdog::sim::snmp_agent::{Agent, AgentCounts};

fuzz_target!(|data: &[u8]| {
    let agent = Agent::new("ups-1", mib::named("ups-mib").expect("built-in map"), "public");
    let tree = agent.tree(&|_| Some(1.0), 0);
    if let Some(reply) = agent.answer(data, &tree, &AgentCounts::default()) {
        // Whatever we answer is a message an SNMP manager can read.
        assert!(snmp2::Pdu::from_bytes(&reply).is_ok());
    }
});
