//! Read plans: the fewest read requests that cover a map's polled entries, and the
//! decoding of their responses back into values.
//!
//! Entries of one table are sorted by address and packed greedily: a request grows while
//! the next entry starts at most `max_gap` registers after the current end and the whole
//! span stays within `max_registers` (125 for registers, 2000 for coils and discrete
//! inputs by the protocol; less for devices that need it). Greedy packing of sorted
//! intervals is optimal for this covering problem; a property test checks it against an
//! exhaustive count.

use super::registers::{CodecError, DataType, RegisterMap, Table, Value};
use crate::model::Name;

/// Protocol limit on registers per read (functions 3 and 4).
pub const MAX_REGISTERS: u16 = 125;
/// Protocol limit on bits per read (functions 1 and 2).
pub const MAX_BITS: u16 = 2000;

/// How requests may be packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Registers per request (1..=125).
    pub max_registers: u16,
    /// Bits per request (1..=2000).
    pub max_bits: u16,
    /// Unused registers a request may read to join two entries (0 = contiguous only).
    pub max_gap: u16,
}

impl Default for PlanLimits {
    fn default() -> Self {
        Self {
            max_registers: MAX_REGISTERS,
            max_bits: MAX_BITS,
            max_gap: 0,
        }
    }
}

/// One read request and the entries it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// Table (so the function code: 1, 2, 3 or 4).
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Registers or bits.
    pub count: u16,
    /// Indices into the map's `registers`.
    pub entries: Vec<usize>,
}

impl ReadRequest {
    /// The Modbus function code that performs this read.
    pub fn function(&self) -> u8 {
        match self.table {
            Table::Coil => 1,
            Table::Discrete => 2,
            Table::Holding => 3,
            Table::Input => 4,
        }
    }

    /// Decodes a response (registers, or bits as 0/1 words) into `(entry, value)`; an
    /// entry whose raw value is a "not available" sentinel yields its error instead.
    pub fn decode<'m>(
        &self,
        map: &'m RegisterMap,
        words: &[u16],
    ) -> Vec<(&'m Name, Result<f64, CodecError>)> {
        self.entries
            .iter()
            .map(|&i| {
                let r = &map.registers[i];
                let at = usize::from(r.address - self.start);
                let value = words.get(at..).map_or_else(
                    || {
                        Err(CodecError::Short {
                            metric: r.metric.clone(),
                            need: usize::from(r.word_count()),
                            got: 0,
                        })
                    },
                    |w| r.decode(map, w),
                );
                let number = value.and_then(|v| match v {
                    Value::Number(x) => Ok(x),
                    Value::Text(_) => Err(CodecError::OutOfRange {
                        metric: r.metric.clone(),
                        value: f64::NAN,
                        data_type: DataType::String,
                    }),
                });
                (&r.metric, number)
            })
            .collect()
    }
}

/// The requests covering every polled entry of `map`, in table then address order.
pub fn plan(map: &RegisterMap, limits: &PlanLimits) -> Vec<ReadRequest> {
    let mut out = Vec::new();
    for table in [Table::Coil, Table::Discrete, Table::Holding, Table::Input] {
        let max = if matches!(table, Table::Coil | Table::Discrete) {
            limits.max_bits.clamp(1, MAX_BITS)
        } else {
            limits.max_registers.clamp(1, MAX_REGISTERS)
        };
        let mut entries: Vec<(u16, u32, usize)> = map
            .registers
            .iter()
            .enumerate()
            .filter(|(_, r)| r.poll && r.table == table)
            .map(|(i, r)| {
                (
                    r.address,
                    u32::from(r.address) + u32::from(r.word_count()),
                    i,
                )
            })
            .collect();
        entries.sort_unstable();
        let mut current: Option<(u16, u32, Vec<usize>)> = None;
        for (start, end, i) in entries {
            if let Some((s, e, list)) = &mut current {
                let joins = u32::from(start) <= *e + u32::from(limits.max_gap)
                    && end.max(*e) - u32::from(*s) <= u32::from(max);
                if joins {
                    *e = end.max(*e);
                    list.push(i);
                    continue;
                }
                out.push(request(table, *s, *e, std::mem::take(list)));
            }
            current = Some((start, end, vec![i]));
        }
        if let Some((s, e, list)) = current {
            out.push(request(table, s, e, list));
        }
    }
    out
}

fn request(table: Table, start: u16, end: u32, entries: Vec<usize>) -> ReadRequest {
    ReadRequest {
        table,
        start,
        // Entries are validated to end by register 65536 and spans to `max` ≤ 2000.
        count: (end - u32::from(start)) as u16,
        entries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::registers::Register;
    use proptest::prelude::*;

    fn entry(table: Table, address: u16, t: DataType) -> Register {
        let text = format!(
            "profile = \"p\"\nkind = \"ups\"\nsource = \"s\"\n[[registers]]\nmetric = \"m\"\ntable = \"{}\"\naddress = {address}\ntype = \"{}\"\n{}",
            format!("{table:?}").to_lowercase(),
            format!("{t:?}").to_lowercase(),
            if t == DataType::Bit { "bit = 0\n" } else { "" },
        );
        RegisterMap::from_toml_str(&text, "t")
            .unwrap()
            .registers
            .remove(0)
    }

    fn map(regs: Vec<Register>) -> RegisterMap {
        RegisterMap {
            profile: "p".into(),
            kind: "ups".into(),
            source: "s".into(),
            word_order: Default::default(),
            byte_order: Default::default(),
            registers: regs,
        }
    }

    #[test]
    fn contiguous_entries_share_a_request_and_gaps_split_them() {
        let m = map(vec![
            entry(Table::Input, 0, DataType::F32),
            entry(Table::Input, 2, DataType::U16),
            entry(Table::Input, 10, DataType::U16),
            entry(Table::Holding, 10, DataType::U16),
            entry(Table::Discrete, 3, DataType::Bool),
        ]);
        let p = plan(&m, &PlanLimits::default());
        let shape: Vec<(u8, u16, u16)> =
            p.iter().map(|r| (r.function(), r.start, r.count)).collect();
        assert_eq!(shape, vec![(2, 3, 1), (3, 10, 1), (4, 0, 3), (4, 10, 1)]);
        let gap = PlanLimits {
            max_gap: 7,
            ..PlanLimits::default()
        };
        let p = plan(&m, &gap);
        assert_eq!(p.iter().filter(|r| r.table == Table::Input).count(), 1);
        assert_eq!(p.last().unwrap().count, 11);
    }

    #[test]
    fn unpolled_entries_are_not_read_and_bits_of_one_word_share_it() {
        let mut cmd = entry(Table::Holding, 5, DataType::U16);
        cmd.poll = false;
        let mut b1 = entry(Table::Input, 0, DataType::Bit);
        b1.bit = Some(1);
        let m = map(vec![cmd, entry(Table::Input, 0, DataType::Bit), b1]);
        let p = plan(&m, &PlanLimits::default());
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].start, p[0].count, p[0].entries.len()), (0, 1, 2));
        let values = p[0].decode(&m, &[0b10]);
        assert_eq!(values[0].1, Ok(0.0));
        assert_eq!(values[1].1, Ok(1.0));
    }

    /// Fewest requests by dynamic programming over the sorted entries: the optimum the
    /// greedy plan must reach.
    fn optimum(spans: &[(u32, u32)], max: u32, gap: u32) -> usize {
        let n = spans.len();
        let mut best = vec![usize::MAX; n + 1];
        best[0] = 0;
        for i in 0..n {
            if best[i] == usize::MAX {
                continue;
            }
            let mut end = 0;
            for j in i..n {
                if j > i && spans[j].0 > end + gap {
                    break;
                }
                end = end.max(spans[j].1);
                if end - spans[i].0 > max {
                    break;
                }
                best[j + 1] = best[j + 1].min(best[i] + 1);
            }
        }
        best[n]
    }

    proptest! {
        #[test]
        fn greedy_plans_are_optimal_and_cover_everything(
            starts in proptest::collection::btree_set(0u16..400, 1..60),
            wide in proptest::collection::vec(any::<bool>(), 60),
            max in 4u16..=125,
            gap in 0u16..6,
        ) {
            // Non-overlapping entries of 1 or 2 registers.
            let mut regs = Vec::new();
            let mut next_free = 0u16;
            for (k, s) in starts.into_iter().enumerate() {
                if s < next_free { continue; }
                let t = if wide[k] { DataType::U32 } else { DataType::U16 };
                let r = entry(Table::Holding, s, t);
                next_free = s + r.word_count();
                regs.push(r);
            }
            let m = map(regs);
            let limits = PlanLimits { max_registers: max, max_bits: 2000, max_gap: gap };
            let p = plan(&m, &limits);
            let mut covered: Vec<usize> = p.iter().flat_map(|r| r.entries.clone()).collect();
            covered.sort_unstable();
            prop_assert_eq!(covered, (0..m.registers.len()).collect::<Vec<_>>());
            for r in &p {
                prop_assert!(r.count <= max);
                for &i in &r.entries {
                    let e = &m.registers[i];
                    prop_assert!(e.address >= r.start && e.address + e.word_count() <= r.start + r.count);
                }
            }
            let spans: Vec<(u32, u32)> = m.registers.iter()
                .map(|r| (u32::from(r.address), u32::from(r.address + r.word_count()))).collect();
            prop_assert_eq!(p.len(), optimum(&spans, u32::from(max), u32::from(gap)));
        }
    }
}
