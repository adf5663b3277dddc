//! The SNMPv2c messages wattchdog writes: the simulator agent's responses and traps,
//! and the receiver's acknowledgement of an inform. Reading is `snmp2`'s; this is the
//! small BER writer that its public API lacks (its encoder is crate-private), checked
//! by decoding everything written with `snmp2` (tests) and with net-snmp (CI).

use super::mib::Oid;

/// PDU tags (RFC 3416).
pub mod tag {
    /// GetRequest-PDU.
    pub const GET: u8 = 0xa0;
    /// GetNextRequest-PDU.
    pub const GET_NEXT: u8 = 0xa1;
    /// Response-PDU.
    pub const RESPONSE: u8 = 0xa2;
    /// SetRequest-PDU.
    pub const SET: u8 = 0xa3;
    /// GetBulkRequest-PDU.
    pub const GET_BULK: u8 = 0xa5;
    /// InformRequest-PDU.
    pub const INFORM: u8 = 0xa6;
    /// SNMPv2-Trap-PDU.
    pub const TRAP: u8 = 0xa7;
}

/// Error statuses used (RFC 3416).
pub mod status {
    /// noError.
    pub const NO_ERROR: u32 = 0;
    /// tooBig.
    pub const TOO_BIG: u32 = 1;
    /// genErr.
    pub const GEN_ERR: u32 = 5;
    /// notWritable.
    pub const NOT_WRITABLE: u32 = 17;
}

/// A varbind's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// INTEGER (Integer32).
    Integer(i64),
    /// Gauge32.
    Gauge(u32),
    /// TimeTicks (hundredths of a second).
    TimeTicks(u32),
    /// OCTET STRING.
    Octets(Vec<u8>),
    /// OBJECT IDENTIFIER.
    Oid(Oid),
    /// NULL (requests).
    Null,
    /// noSuchObject.
    NoSuchObject,
    /// noSuchInstance.
    NoSuchInstance,
    /// endOfMibView.
    EndOfMibView,
}

/// `snmpTrapOID.0`, the second varbind of every notification.
pub const SNMP_TRAP_OID: [u32; 11] = [1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];
/// `sysUpTime.0`, the first.
pub const SYS_UPTIME: [u32; 9] = [1, 3, 6, 1, 2, 1, 1, 3, 0];

fn length(out: &mut Vec<u8>, n: usize) {
    if n < 128 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    length(out, content.len());
    out.extend_from_slice(content);
}

fn integer(out: &mut Vec<u8>, tag: u8, n: i64) {
    let bytes = n.to_be_bytes();
    // Minimal two's complement: drop leading bytes that only repeat the sign.
    let mut start = 0;
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    tlv(out, tag, &bytes[start..]);
}

fn unsigned(out: &mut Vec<u8>, tag: u8, n: u32) {
    integer(out, tag, i64::from(n));
}

fn oid(out: &mut Vec<u8>, o: &Oid) {
    let arcs = o.0.as_slice();
    let mut body = Vec::with_capacity(arcs.len() + 1);
    let first = match arcs {
        [a, b, ..] => u64::from(*a) * 40 + u64::from(*b),
        [a] => u64::from(*a) * 40,
        [] => 0,
    };
    let mut base128 = |mut v: u64| {
        let mut tmp = [0u8; 10];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = (v & 0x7f) as u8 | if i == tmp.len() - 1 { 0 } else { 0x80 };
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        body.extend_from_slice(&tmp[i..]);
    };
    base128(first);
    for &a in arcs.iter().skip(2) {
        base128(u64::from(a));
    }
    tlv(out, 0x06, &body);
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Integer(n) => integer(out, 0x02, *n),
        Value::Gauge(n) => unsigned(out, 0x42, *n),
        Value::TimeTicks(n) => unsigned(out, 0x43, *n),
        Value::Octets(b) => tlv(out, 0x04, b),
        Value::Oid(o) => oid(out, o),
        Value::Null => tlv(out, 0x05, &[]),
        Value::NoSuchObject => tlv(out, 0x80, &[]),
        Value::NoSuchInstance => tlv(out, 0x81, &[]),
        Value::EndOfMibView => tlv(out, 0x82, &[]),
    }
}

/// A whole SNMPv2c message: `pdu_tag` with its request id, error status and index (for
/// GetBulk: non-repeaters and max-repetitions), and varbinds.
pub fn message_v2c(
    community: &[u8],
    pdu_tag: u8,
    request_id: i32,
    error_status: u32,
    error_index: u32,
    varbinds: &[(Oid, Value)],
) -> Vec<u8> {
    let mut vbs = Vec::new();
    for (name, v) in varbinds {
        let mut one = Vec::new();
        oid(&mut one, name);
        value(&mut one, v);
        tlv(&mut vbs, 0x30, &one);
    }
    let mut pdu = Vec::new();
    integer(&mut pdu, 0x02, i64::from(request_id));
    unsigned(&mut pdu, 0x02, error_status);
    unsigned(&mut pdu, 0x02, error_index);
    tlv(&mut pdu, 0x30, &vbs);
    let mut msg = Vec::new();
    integer(&mut msg, 0x02, 1); // version-2c
    tlv(&mut msg, 0x04, community);
    tlv(&mut msg, pdu_tag, &pdu);
    let mut out = Vec::with_capacity(msg.len() + 4);
    tlv(&mut out, 0x30, &msg);
    out
}

/// An SNMPv2-Trap (or InformRequest) for `trap`, with `sysUpTime.0` and `snmpTrapOID.0`
/// first as RFC 3416 requires.
pub fn notification_v2c(
    community: &[u8],
    pdu_tag: u8,
    request_id: i32,
    uptime_centis: u32,
    trap: &Oid,
    varbinds: &[(Oid, Value)],
) -> Vec<u8> {
    let mut all = vec![
        (Oid(SYS_UPTIME.to_vec()), Value::TimeTicks(uptime_centis)),
        (Oid(SNMP_TRAP_OID.to_vec()), Value::Oid(trap.clone())),
    ];
    all.extend_from_slice(varbinds);
    message_v2c(community, pdu_tag, request_id, 0, 0, &all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arcs() -> impl Strategy<Value = Oid> {
        // From 1: snmp2 (asn1-rs) reads the OID 0.0 back as a single arc.
        (
            1u32..3,
            0u32..40,
            proptest::collection::vec(any::<u32>(), 0..16),
        )
            .prop_map(|(a, b, rest)| {
                let mut v = vec![a, b];
                v.extend(rest);
                Oid(v)
            })
    }

    fn ours(o: &snmp2::Oid) -> Oid {
        Oid(o.iter().unwrap().map(|a| a as u32).collect())
    }

    proptest! {
        /// What we write, snmp2 reads back as written.
        #[test]
        fn responses_decode_with_snmp2(
            id in any::<i32>(),
            community in proptest::collection::vec(any::<u8>(), 0..40),
            rows in proptest::collection::vec((arcs(), any::<i32>(), any::<u32>()), 0..40),
        ) {
            let vbs: Vec<(Oid, Value)> = rows
                .iter()
                .flat_map(|(o, i, g)| {
                    [(o.clone(), Value::Integer(i64::from(*i))), (o.clone(), Value::Gauge(*g))]
                })
                .collect();
            let bytes = message_v2c(&community, tag::RESPONSE, id, 0, 0, &vbs);
            let pdu = snmp2::Pdu::from_bytes(&bytes).unwrap();
            prop_assert_eq!(pdu.req_id, id);
            prop_assert_eq!(pdu.community, &community[..]);
            prop_assert_eq!(pdu.message_type, snmp2::MessageType::Response);
            let got: Vec<_> = pdu.varbinds.map(|(o, v)| (ours(&o), match v {
                snmp2::Value::Integer(n) => n,
                snmp2::Value::Unsigned32(n) => i64::from(n),
                other => panic!("{other:?}"),
            })).collect();
            let want: Vec<_> = rows.iter().flat_map(|(o, i, g)| {
                [(o.clone(), i64::from(*i)), (o.clone(), i64::from(*g))]
            }).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_trap_carries_uptime_and_trap_oid_first() {
        let trap: Oid = "1.3.6.1.2.1.33.2.3".parse().unwrap();
        let descr: Oid = "1.3.6.1.2.1.33.1.6.2.1.2.1".parse().unwrap();
        let bypass: Oid = "1.3.6.1.2.1.33.1.6.3.9".parse().unwrap();
        let bytes = notification_v2c(
            b"public",
            tag::TRAP,
            7,
            4200,
            &trap,
            &[(descr, Value::Oid(bypass.clone()))],
        );
        let pdu = snmp2::Pdu::from_bytes(&bytes).unwrap();
        assert_eq!(pdu.message_type, snmp2::MessageType::Trap);
        let vbs: Vec<_> = pdu.varbinds.collect();
        assert_eq!(ours(&vbs[0].0), Oid(SYS_UPTIME.to_vec()));
        assert!(matches!(vbs[0].1, snmp2::Value::Timeticks(4200)));
        match &vbs[1].1 {
            snmp2::Value::ObjectIdentifier(o) => assert_eq!(ours(o), trap),
            other => panic!("{other:?}"),
        }
        match &vbs[2].1 {
            snmp2::Value::ObjectIdentifier(o) => assert_eq!(ours(o), bypass),
            other => panic!("{other:?}"),
        }
    }
}
