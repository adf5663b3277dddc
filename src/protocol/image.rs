//! A device's register image: what a simulated device serves. Values are written in by
//! metric through the map's codec; clients read tables by address and may write only the
//! map's writable entries.
//!
//! Reads follow the behaviour vendors document (e.g. APC's 990-9840 notes): a read that
//! starts on an undefined register is an "illegal data address" exception; a block read
//! that starts on a defined one returns zeros for undefined registers inside it.

use super::registers::{RegisterMap, Table, Value};
use std::collections::BTreeMap;

/// Why a request was refused, as the Modbus exception it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Exception 2: the address is not defined, or not writable.
    IllegalDataAddress,
    /// Exception 3: a count of zero or beyond the protocol's limit.
    IllegalDataValue,
}

/// The registers and bits of one device.
#[derive(Debug, Clone)]
pub struct DeviceImage {
    map: RegisterMap,
    tables: [BTreeMap<u16, u16>; 4],
}

fn slot(t: Table) -> usize {
    match t {
        Table::Coil => 0,
        Table::Discrete => 1,
        Table::Holding => 2,
        Table::Input => 3,
    }
}

impl DeviceImage {
    /// Every register of every entry defined and zero.
    pub fn new(map: RegisterMap) -> Self {
        let mut tables: [BTreeMap<u16, u16>; 4] = Default::default();
        for r in &map.registers {
            for k in 0..r.word_count() {
                tables[slot(r.table)].insert(r.address + k, 0);
            }
        }
        Self { map, tables }
    }

    /// The map served.
    pub fn map(&self) -> &RegisterMap {
        &self.map
    }

    /// Stores `value` in the entry of `metric` (bit fields keep their register's other
    /// bits). Returns false when the map has no such metric or the value does not fit.
    pub fn set(&mut self, metric: &str, value: f64) -> bool {
        let Some(r) = self.map.registers.iter().find(|r| &*r.metric == metric) else {
            return false;
        };
        let Ok(words) = r.encode(&self.map, &Value::Number(value)) else {
            return false;
        };
        let table = &mut self.tables[slot(r.table)];
        if let Some(bit) = r.bit {
            let w = table.entry(r.address).or_default();
            *w = (*w & !(1 << bit)) | words[0];
        } else {
            for (k, w) in words.into_iter().enumerate() {
                table.insert(r.address + k as u16, w);
            }
        }
        true
    }

    /// Reads `count` registers (or bits, as 0/1) from `start`.
    pub fn read(&self, table: Table, start: u16, count: u16) -> Result<Vec<u16>, Refusal> {
        let limit = if matches!(table, Table::Coil | Table::Discrete) {
            super::plan::MAX_BITS
        } else {
            super::plan::MAX_REGISTERS
        };
        if count == 0 || count > limit {
            return Err(Refusal::IllegalDataValue);
        }
        let t = &self.tables[slot(table)];
        if !t.contains_key(&start) || u32::from(start) + u32::from(count) > 65_536 {
            return Err(Refusal::IllegalDataAddress);
        }
        Ok((0..count)
            .map(|k| t.get(&(start + k)).copied().unwrap_or(0))
            .collect())
    }

    /// Writes registers (or bits as 0/1) from `start`. Every word written must belong to
    /// a writable entry, and multi-register entries must be written whole. Returns the
    /// entries changed, with their new values.
    pub fn write(
        &mut self,
        table: Table,
        start: u16,
        words: &[u16],
    ) -> Result<Vec<(String, f64)>, Refusal> {
        if words.is_empty() || !matches!(table, Table::Coil | Table::Holding) {
            return Err(Refusal::IllegalDataValue);
        }
        let end = u32::from(start) + words.len() as u32;
        let touched: Vec<usize> = (0..self.map.registers.len())
            .filter(|&i| {
                let r = &self.map.registers[i];
                r.table == table
                    && u32::from(r.address) < end
                    && start < r.address.saturating_add(r.word_count())
            })
            .collect();
        let covered: u32 = touched
            .iter()
            .map(|&i| {
                let r = &self.map.registers[i];
                u32::from(r.word_count())
            })
            .sum();
        let whole = touched.iter().all(|&i| {
            let r = &self.map.registers[i];
            r.writable
                && r.bit.is_none()
                && r.address >= start
                && u32::from(r.address) + u32::from(r.word_count()) <= end
        });
        if touched.is_empty() || !whole || covered != words.len() as u32 {
            return Err(Refusal::IllegalDataAddress);
        }
        let t = &mut self.tables[slot(table)];
        for (k, &w) in words.iter().enumerate() {
            t.insert(start + k as u16, w);
        }
        let mut changed = Vec::new();
        for i in touched {
            let r = &self.map.registers[i];
            let at = usize::from(r.address - start);
            if let Ok(Value::Number(v)) = r.decode(&self.map, &words[at..]) {
                changed.push((r.metric.to_string(), v));
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::plan::{plan, PlanLimits};
    use crate::protocol::profiles::builtin;

    fn image(name: &str) -> DeviceImage {
        DeviceImage::new(builtin(name).unwrap().unwrap())
    }

    #[test]
    fn set_values_read_back_through_the_plan() {
        let mut ups = image("ups-generic");
        for (m, v) in [
            ("input_power_kw", 412.3),
            ("output_power_kw", -1.5),
            ("battery_temp_c", 24.87),
            ("on_battery", 1.0),
            ("bypass_active", 1.0),
        ] {
            assert!(ups.set(m, v), "{m}");
        }
        assert!(
            ups.set("on_battery", 0.0),
            "a bit clears without touching its neighbour"
        );
        let map = ups.map().clone();
        let mut got = Vec::new();
        for req in plan(&map, &PlanLimits::default()) {
            let words = ups.read(req.table, req.start, req.count).unwrap();
            got.extend(
                req.decode(&map, &words)
                    .into_iter()
                    .map(|(m, v)| (m.to_string(), v)),
            );
        }
        let v = |m: &str| got.iter().find(|(k, _)| k == m).unwrap().1.clone().unwrap();
        assert!((v("input_power_kw") - 412.3).abs() < 1e-9);
        assert!((v("output_power_kw") + 1.5).abs() < 1e-9);
        assert!((v("battery_temp_c") - 24.87).abs() < 1e-9);
        assert_eq!((v("on_battery"), v("bypass_active")), (0.0, 1.0));
    }

    #[test]
    fn reads_of_undefined_addresses_and_bad_counts_are_refused() {
        let ups = image("ups-generic");
        assert_eq!(
            ups.read(Table::Input, 0, 1),
            Err(Refusal::IllegalDataAddress)
        );
        assert_eq!(
            ups.read(Table::Input, 0x0424, 0),
            Err(Refusal::IllegalDataValue)
        );
        assert_eq!(
            ups.read(Table::Input, 0x0424, 126),
            Err(Refusal::IllegalDataValue)
        );
        // A block starting on a defined register reads zeros for the gap after it.
        assert_eq!(ups.read(Table::Input, 0x0424, 3).unwrap().len(), 3);
    }

    #[test]
    fn only_writable_entries_accept_writes() {
        let mut ch = image("chiller-generic");
        let changed = ch.write(Table::Holding, 1201, &[1300]).unwrap();
        assert_eq!(changed, vec![("setpoint_c".to_owned(), 13.0)]);
        assert_eq!(ch.read(Table::Holding, 1201, 1).unwrap(), vec![1300]);
        assert_eq!(
            ch.write(Table::Holding, 1000, &[0]),
            Err(Refusal::IllegalDataAddress),
            "a measured value is not a setpoint"
        );
        assert_eq!(
            ch.write(Table::Holding, 1200, &[0, 1300]),
            Err(Refusal::IllegalDataAddress),
            "no writing into undefined registers"
        );
        let mut ups = image("ups-generic");
        assert_eq!(
            ups.write(Table::Coil, 2001, &[1]).unwrap(),
            vec![("bypass_command".to_owned(), 1.0)]
        );
        assert_eq!(
            ups.write(Table::Input, 0x0424, &[1]),
            Err(Refusal::IllegalDataValue)
        );
    }
}
