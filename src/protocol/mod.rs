//! Pure protocol decoding, no I/O: Modbus register maps and their codec, the built-in
//! profiles, and read plans (which requests cover a map's polled registers).

pub mod bacnet;
pub mod bacnet_map;
pub mod ber;
pub mod frame;
pub mod image;
pub mod mib;
pub mod plan;
pub mod profiles;
pub mod registers;
pub mod sparkplug;
pub mod topics;
