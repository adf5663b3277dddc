//! Live sources: collectors that read devices and hand readings to the pipeline.

pub mod modbus;
pub mod mqtt;
