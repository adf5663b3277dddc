//! Integration tests: the real binary and the real pipeline on real files.

mod support;

mod bacnet;
mod bad_input;
mod benchmarks;
mod calibrate;
mod cli;
mod determinism;
mod extreme;
mod iforest_reference;
mod interop_bacnet;
mod interop_modbus;
mod interop_mqtt;
mod interop_snmp;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "kafka")]
mod many_sites;
mod modbus;
mod mqtt;
mod onboarding;
mod oscillation;
mod pcap;
mod replay_data;
mod report;
mod seasonal;
mod snmp;
mod soc;
mod startup;
mod syslog;
mod train;
