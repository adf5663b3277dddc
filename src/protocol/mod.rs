//! Pure protocol decoding, no I/O: Modbus register maps and their codec.

pub mod registers;
