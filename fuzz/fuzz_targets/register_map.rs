//! A Modbus register map file (`protocols/modbus/*.toml`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wattchdog::protocol::registers::RegisterMap;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(map) = RegisterMap::from_toml_str(text, "fuzz.toml") {
            let words = [0x1234u16; 8];
            for r in &map.registers {
                let _ = r.decode(&map, &words);
            }
        }
    }
});
