//! The commands: each assembles sources, the pipeline and sinks for one job.

pub mod broker;
pub mod cli;
pub mod demo;
pub mod replay;
pub mod run;
pub mod soc;
pub mod train;
