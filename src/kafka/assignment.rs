//! A consumer group member's assignment as the group coordinator hands it out
//! (Kafka's "consumer" protocol type, `ConsumerProtocolAssignment`, versions 0-3):
//! `int16 version`, then `[string topic, [int32 partition]]`, then user data, which is
//! not read. The bytes come from the broker; anything malformed is an error, never a
//! panic or a large allocation.

use std::collections::BTreeMap;
use thiserror::Error;

/// Why an assignment could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssignmentError {
    /// The bytes ended inside a field.
    #[error("assignment cut short")]
    Short,
    /// A negative length, or a topic name that is not UTF-8.
    #[error("assignment malformed: {0}")]
    Malformed(&'static str),
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], AssignmentError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(AssignmentError::Short)?;
        self.0 = rest;
        Ok(*head)
    }

    fn i16(&mut self) -> Result<i16, AssignmentError> {
        self.take::<2>().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, AssignmentError> {
        self.take::<4>().map(i32::from_be_bytes)
    }

    /// An array length: never more items than bytes left (each takes at least one).
    fn len(&mut self) -> Result<usize, AssignmentError> {
        let n = self.i32()?;
        let n = usize::try_from(n).map_err(|_| AssignmentError::Malformed("negative length"))?;
        if n > self.0.len() {
            return Err(AssignmentError::Short);
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, AssignmentError> {
        let n = usize::try_from(self.i16()?)
            .map_err(|_| AssignmentError::Malformed("negative string length"))?;
        if n > self.0.len() {
            return Err(AssignmentError::Short);
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| AssignmentError::Malformed("topic not UTF-8"))
    }
}

/// The partitions assigned, by topic.
pub fn decode(bytes: &[u8]) -> Result<BTreeMap<String, Vec<i32>>, AssignmentError> {
    let mut r = Reader(bytes);
    let version = r.i16()?;
    if version < 0 {
        return Err(AssignmentError::Malformed("negative version"));
    }
    let mut out = BTreeMap::new();
    for _ in 0..r.len()? {
        let topic = r.string()?;
        let n = r.len()?;
        let mut partitions = Vec::with_capacity(n.min(r.0.len() / 4));
        for _ in 0..n {
            partitions.push(r.i32()?);
        }
        partitions.sort_unstable();
        out.entry(topic).or_insert_with(Vec::new).extend(partitions);
    }
    Ok(out)
}

/// An assignment's bytes (the tests' and the fuzz target's reference).
pub fn encode(version: i16, topics: &[(&str, &[i32])]) -> Vec<u8> {
    let mut b = version.to_be_bytes().to_vec();
    b.extend((topics.len() as i32).to_be_bytes());
    for (t, ps) in topics {
        b.extend((t.len() as i16).to_be_bytes());
        b.extend(t.as_bytes());
        b.extend((ps.len() as i32).to_be_bytes());
        for p in *ps {
            b.extend(p.to_be_bytes());
        }
    }
    // User data: null.
    b.extend((-1i32).to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_reads_back() {
        let b = encode(1, &[("wattchdog.telemetry.v1", &[5, 0, 2]), ("other", &[])]);
        let a = decode(&b).unwrap();
        assert_eq!(a["wattchdog.telemetry.v1"], vec![0, 2, 5]);
        assert!(a["other"].is_empty());
    }

    #[test]
    fn malformed_assignments_are_errors() {
        let good = encode(0, &[("t", &[1, 2])]);
        for cut in 0..good.len() - 4 {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        // A billion topics announced in a few bytes: refused before allocating.
        let mut huge = 0i16.to_be_bytes().to_vec();
        huge.extend(1_000_000_000i32.to_be_bytes());
        assert_eq!(decode(&huge), Err(AssignmentError::Short));
        let mut neg = 0i16.to_be_bytes().to_vec();
        neg.extend((-5i32).to_be_bytes());
        assert!(matches!(decode(&neg), Err(AssignmentError::Malformed(_))));
    }

    proptest::proptest! {
        /// Any bytes: partitions or an error, never a panic.
        #[test]
        fn any_bytes_decode_or_fail(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode(&bytes);
        }

        /// What is encoded reads back.
        #[test]
        fn assignments_round_trip(topic in "[a-z.]{1,20}", ps in proptest::collection::vec(0i32..1000, 0..20)) {
            let b = encode(3, &[(&topic, &ps)]);
            let mut want = ps.clone();
            want.sort_unstable();
            proptest::prop_assert_eq!(&decode(&b).unwrap()[&topic], &want);
        }
    }
}
