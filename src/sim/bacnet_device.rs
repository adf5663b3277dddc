//! A simulated device as a BACnet/IP server (`simulate --serve-bacnet`): its object map
//! (`protocols/bacnet/`) turned around. It answers Who-Is with I-Am, ReadProperty and
//! ReadPropertyMultiple from the plant's present values, takes COV subscriptions and
//! notifies subscribers when a present value moves by its `cov_increment`, and takes
//! WriteProperty of a writable object's present value (the BMS commanding a setpoint)
//! as the Modbus gateway takes a register write; every other write is refused
//! (`write-access-denied`).

use crate::protocol::bacnet::{
    self, confirmed, error, object_type, property, unconfirmed, Apdu, CovNotification, IAm,
    ObjectId, PropertyRef, PropertyValue, ReadProperty, ReadPropertyMultiple,
    ReadPropertyMultipleAck, StatusFlags, SubscribeCov, Value, WhoIs,
};
use crate::protocol::bacnet_map::{BacnetMap, Object};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Vendor identifier served (999: unassigned, as test devices use).
const VENDOR: u32 = 999;
/// Subscriptions one device keeps (more are refused).
const MAX_SUBSCRIPTIONS: usize = 256;

/// Requests the served devices received.
#[derive(Debug, Default)]
pub struct DeviceCounts {
    /// Who-Is answered.
    pub who_is: AtomicU64,
    /// ReadProperty and ReadPropertyMultiple answered.
    pub reads: AtomicU64,
    /// Subscriptions made or renewed.
    pub subscriptions: AtomicU64,
    /// Writes taken.
    pub writes: AtomicU64,
    /// Requests refused (errors, rejects) or not BACnet.
    pub refused: AtomicU64,
    /// COV notifications sent.
    pub notifications: AtomicU64,
}

impl DeviceCounts {
    /// `(who_is, reads, subscriptions, writes, refused, notifications)`.
    pub fn snapshot(&self) -> [u64; 6] {
        [
            &self.who_is,
            &self.reads,
            &self.subscriptions,
            &self.writes,
            &self.refused,
            &self.notifications,
        ]
        .map(|a| a.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Clone)]
struct Subscription {
    to: SocketAddr,
    process: u32,
    object: ObjectId,
    /// Wall ms when it lapses; `None`: never.
    until: Option<i64>,
    /// Present value last notified.
    last: Option<f64>,
}

/// A write a client made that the plant should follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The metric written.
    pub metric: String,
    /// Its new value (the metric's unit).
    pub value: f64,
    /// The object written.
    pub object: ObjectId,
    /// The property written.
    pub property: u32,
    /// The value as written on the wire (before the map's scale and offset).
    pub raw: f64,
}

/// One served device.
#[derive(Debug)]
pub struct Device {
    /// Device name.
    pub name: String,
    /// Device object instance.
    pub instance: u32,
    map: BacnetMap,
    subscriptions: Vec<Subscription>,
}

/// What the device answers to one datagram.
#[derive(Debug, Default)]
pub struct Answer {
    /// The reply, if one is due.
    pub reply: Option<Vec<u8>>,
    /// A write the plant should follow.
    pub written: Option<Written>,
}

fn present(o: &Object, v: f64) -> Value {
    let raw = (v - o.offset) / o.scale;
    match o.object.kind {
        object_type::BINARY_INPUT | object_type::BINARY_OUTPUT | object_type::BINARY_VALUE => {
            Value::Enumerated(u32::from(raw >= 0.5))
        }
        object_type::MULTI_STATE_INPUT
        | object_type::MULTI_STATE_OUTPUT
        | object_type::MULTI_STATE_VALUE => Value::Unsigned(raw.round().max(1.0) as u64),
        _ => Value::Real(raw as f32),
    }
}

/// BACnet engineering units for the map's unit strings (clause 21, `BACnetEngineeringUnits`).
fn units(unit: &str) -> u32 {
    match unit {
        "°C" => 62,
        "L/s" => 87,
        "kW" => 48,
        "%" => 98,
        "V" => 5,
        "A" => 3,
        "Hz" => 27,
        _ => 95, // no-units
    }
}

impl Device {
    /// A device for `map` with device object `instance`.
    pub fn new(name: &str, instance: u32, map: BacnetMap) -> Self {
        Self {
            name: name.to_owned(),
            instance,
            map,
            subscriptions: Vec::new(),
        }
    }

    fn id(&self) -> ObjectId {
        ObjectId::device(self.instance)
    }

    /// One property of one object, from the plant's present `value` of each metric.
    fn property(
        &self,
        object: ObjectId,
        p: PropertyRef,
        value: &dyn Fn(&str) -> Option<f64>,
    ) -> Result<Vec<Value>, (u32, u32)> {
        let unknown_property = Err((error::CLASS_PROPERTY, error::UNKNOWN_PROPERTY));
        if object == self.id() {
            let list: Vec<Value> = std::iter::once(self.id())
                .chain(self.map.objects.iter().map(|o| o.object))
                .map(Value::Object)
                .collect();
            return Ok(match p.property {
                property::OBJECT_IDENTIFIER => vec![Value::Object(object)],
                property::OBJECT_NAME => vec![Value::Text(self.name.clone())],
                property::OBJECT_TYPE => vec![Value::Enumerated(u32::from(object_type::DEVICE))],
                property::SYSTEM_STATUS => vec![Value::Enumerated(0)],
                property::VENDOR_NAME => vec![Value::Text("wattchdog simulator".into())],
                property::VENDOR_IDENTIFIER => vec![Value::Unsigned(u64::from(VENDOR))],
                property::MAX_APDU_LENGTH_ACCEPTED => {
                    vec![Value::Unsigned(bacnet::MAX_APDU as u64)]
                }
                property::SEGMENTATION_SUPPORTED => vec![Value::Enumerated(3)],
                property::OBJECT_LIST => match p.index {
                    None => list,
                    Some(0) => vec![Value::Unsigned(list.len() as u64)],
                    Some(i) => match list.get(i as usize - 1) {
                        Some(v) => vec![v.clone()],
                        None => return Err((error::CLASS_PROPERTY, 42)), // invalid-array-index
                    },
                },
                _ => return unknown_property,
            });
        }
        let Some((_, o)) = self.map.by_object(object) else {
            return Err((error::CLASS_OBJECT, error::UNKNOWN_OBJECT));
        };
        let v = value(&o.metric);
        Ok(match p.property {
            property::OBJECT_IDENTIFIER => vec![Value::Object(object)],
            property::OBJECT_NAME => vec![Value::Text(o.metric.to_string())],
            property::OBJECT_TYPE => vec![Value::Enumerated(u32::from(object.kind))],
            // A metric the plant has no value for yet reads as 0 with the fault flag.
            property::PRESENT_VALUE => vec![present(o, v.unwrap_or(o.offset))],
            property::STATUS_FLAGS => vec![StatusFlags {
                fault: v.is_none(),
                ..Default::default()
            }
            .value()],
            property::RELIABILITY => vec![Value::Enumerated(if v.is_some() { 0 } else { 7 })],
            property::OUT_OF_SERVICE => vec![Value::Bool(false)],
            property::UNITS if !matches!(present(o, 0.0), Value::Enumerated(_)) => {
                vec![Value::Enumerated(units(&o.unit))]
            }
            property::COV_INCREMENT if matches!(present(o, 0.0), Value::Real(_)) => {
                vec![Value::Real((o.cov_increment / o.scale.abs()) as f32)]
            }
            _ => return unknown_property,
        })
    }

    /// The answer to one datagram from `from` (`now`: wall ms, for subscriptions).
    pub fn answer(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        value: &dyn Fn(&str) -> Option<f64>,
        now: i64,
        counts: &DeviceCounts,
    ) -> Answer {
        let refused = || {
            counts.refused.fetch_add(1, Ordering::Relaxed);
        };
        let Ok(d) = bacnet::decode(datagram) else {
            refused();
            return Answer::default();
        };
        match d.apdu {
            Some(Apdu::Unconfirmed {
                service: unconfirmed::WHO_IS,
                body,
            }) => {
                let Ok(who) = WhoIs::decode(body) else {
                    refused();
                    return Answer::default();
                };
                if !who.includes(self.instance) {
                    return Answer::default();
                }
                counts.who_is.fetch_add(1, Ordering::Relaxed);
                let iam = IAm {
                    device: self.id(),
                    max_apdu: bacnet::MAX_APDU as u32,
                    segmentation: 3,
                    vendor: VENDOR,
                };
                let reply = bacnet::encode(
                    &Apdu::Unconfirmed {
                        service: unconfirmed::I_AM,
                        body: &iam.encode(),
                    },
                    false,
                );
                Answer {
                    reply: Some(reply),
                    written: None,
                }
            }
            Some(Apdu::Confirmed {
                invoke_id,
                service,
                segmented,
                max_apdu,
                body,
            }) => {
                let mut written = None;
                let result = if segmented {
                    Err(Apdu::Abort {
                        invoke_id,
                        reason: error::ABORT_SEGMENTATION_NOT_SUPPORTED,
                    })
                } else {
                    self.confirmed(invoke_id, service, body, from, value, now, &mut written)
                };
                if result.is_ok() {
                    let counter = match service {
                        confirmed::READ_PROPERTY | confirmed::READ_PROPERTY_MULTIPLE => {
                            &counts.reads
                        }
                        confirmed::SUBSCRIBE_COV => &counts.subscriptions,
                        _ => &counts.writes,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                let reply = match result {
                    Ok(None) => {
                        let r = Apdu::SimpleAck { invoke_id, service };
                        bacnet::encode(&r, false)
                    }
                    Ok(Some(body)) => {
                        let r = Apdu::ComplexAck {
                            invoke_id,
                            service,
                            segmented: false,
                            body: &body,
                        };
                        let r = bacnet::encode(&r, false);
                        if r.len() - 6 > max_apdu {
                            refused();
                            bacnet::encode(
                                &Apdu::Abort {
                                    invoke_id,
                                    reason: error::ABORT_SEGMENTATION_NOT_SUPPORTED,
                                },
                                false,
                            )
                        } else {
                            r
                        }
                    }
                    Err(apdu) => {
                        refused();
                        bacnet::encode(&apdu, false)
                    }
                };
                Answer {
                    reply: Some(reply),
                    written,
                }
            }
            // I-Am of others, acknowledgements, network messages: nothing to say.
            _ => Answer::default(),
        }
    }

    /// A confirmed service: `Ok(None)` a simple ack, `Ok(Some)` a complex ack's body,
    /// `Err` the error, reject or abort to send.
    #[allow(clippy::too_many_arguments)]
    fn confirmed<'a>(
        &mut self,
        invoke_id: u8,
        service: u8,
        body: &[u8],
        from: SocketAddr,
        value: &dyn Fn(&str) -> Option<f64>,
        now: i64,
        written: &mut Option<Written>,
    ) -> Result<Option<Vec<u8>>, Apdu<'a>> {
        let reject = |reason| Apdu::Reject { invoke_id, reason };
        let fail = |(class, code)| Apdu::Error {
            invoke_id,
            service,
            class,
            code,
        };
        match service {
            confirmed::READ_PROPERTY => {
                let rp =
                    ReadProperty::decode(body).map_err(|_| reject(error::REJECT_INVALID_TAG))?;
                let values = self.property(rp.object, rp.property, value).map_err(fail)?;
                Ok(Some(rp.ack(&values)))
            }
            confirmed::READ_PROPERTY_MULTIPLE => {
                let rpm = ReadPropertyMultiple::decode(body)
                    .map_err(|_| reject(error::REJECT_INVALID_TAG))?;
                let ack = rpm
                    .0
                    .iter()
                    .map(|(object, props)| {
                        let results = props
                            .iter()
                            .map(|p| (*p, self.property(*object, *p, value)))
                            .collect();
                        (*object, results)
                    })
                    .collect();
                Ok(Some(ReadPropertyMultipleAck(ack).encode()))
            }
            confirmed::SUBSCRIBE_COV => {
                let s =
                    SubscribeCov::decode(body).map_err(|_| reject(error::REJECT_INVALID_TAG))?;
                if self.map.by_object(s.object).is_none() {
                    return Err(fail((error::CLASS_OBJECT, error::UNKNOWN_OBJECT)));
                }
                let same = |x: &Subscription| {
                    x.to == from && x.process == s.process && x.object == s.object
                };
                self.subscriptions.retain(|x| !same(x));
                if s.confirmed.is_none() && s.lifetime.is_none() {
                    return Ok(None); // a cancellation
                }
                if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                    return Err(fail((error::CLASS_SERVICES, error::SERVICE_REQUEST_DENIED)));
                }
                self.subscriptions.push(Subscription {
                    to: from,
                    process: s.process,
                    object: s.object,
                    until: s
                        .lifetime
                        .filter(|l| *l > 0)
                        .map(|l| now + i64::from(l) * 1000),
                    last: None,
                });
                Ok(None)
            }
            confirmed::WRITE_PROPERTY => {
                let writes = bacnet::decode_writes(service, body)
                    .map_err(|_| reject(error::REJECT_INVALID_TAG))?;
                let denied = (error::CLASS_PROPERTY, error::WRITE_ACCESS_DENIED);
                let w = writes.first().ok_or_else(|| fail(denied))?;
                let (_, o) = self
                    .map
                    .by_object(w.object)
                    .ok_or_else(|| fail((error::CLASS_OBJECT, error::UNKNOWN_OBJECT)))?;
                let v = w.value.values.first().and_then(Value::number);
                match v {
                    Some(v)
                        if o.writable && w.value.property.property == property::PRESENT_VALUE =>
                    {
                        *written = Some(Written {
                            metric: o.metric.to_string(),
                            value: v * o.scale + o.offset,
                            object: w.object,
                            property: w.value.property.property,
                            raw: v,
                        });
                        Ok(None)
                    }
                    _ => Err(fail(denied)),
                }
            }
            _ => Err(reject(error::REJECT_UNRECOGNIZED_SERVICE)),
        }
    }

    /// Unconfirmed COV notifications due: subscriptions whose object's present value
    /// moved by at least its `cov_increment` since last notified (the first one at
    /// once, as a subscription asks). Lapsed subscriptions are dropped.
    pub fn notifications(
        &mut self,
        value: &dyn Fn(&str) -> Option<f64>,
        now: i64,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        self.subscriptions
            .retain(|s| s.until.is_none_or(|u| u > now));
        let mut out = Vec::new();
        let device = self.id();
        for s in &mut self.subscriptions {
            let Some((_, o)) = self.map.by_object(s.object) else {
                continue;
            };
            let Some(v) = value(&o.metric) else { continue };
            let moved = s
                .last
                .is_none_or(|l| (v - l).abs() >= o.cov_increment.max(1e-9));
            if !moved {
                continue;
            }
            s.last = Some(v);
            let n = CovNotification {
                process: s.process,
                device,
                object: s.object,
                time_remaining: s
                    .until
                    .map_or(0, |u| u32::try_from((u - now) / 1000).unwrap_or(u32::MAX)),
                values: vec![
                    PropertyValue {
                        property: PropertyRef::of(property::PRESENT_VALUE),
                        values: vec![present(o, v)],
                        priority: None,
                    },
                    PropertyValue {
                        property: PropertyRef::of(property::STATUS_FLAGS),
                        values: vec![StatusFlags::default().value()],
                        priority: None,
                    },
                ],
            };
            let datagram = bacnet::encode(
                &Apdu::Unconfirmed {
                    service: unconfirmed::COV_NOTIFICATION,
                    body: &n.encode(),
                },
                false,
            );
            out.push((s.to, datagram));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::bacnet_map;

    fn chiller() -> Device {
        Device::new(
            "chiller-1",
            1001,
            bacnet_map::named("chiller-bacnet").unwrap(),
        )
    }

    fn request(service: u8, body: &[u8]) -> Vec<u8> {
        bacnet::encode(
            &Apdu::Confirmed {
                invoke_id: 9,
                service,
                segmented: false,
                max_apdu: 1476,
                body,
            },
            false,
        )
    }

    fn plant(m: &str) -> Option<f64> {
        match m {
            "supply_temp_c" => Some(7.5),
            "running" => Some(1.0),
            "setpoint_c" => Some(7.0),
            _ => None,
        }
    }

    #[test]
    fn reads_subscriptions_and_writes() {
        let mut d = chiller();
        let counts = DeviceCounts::default();
        let from: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let ai1: ObjectId = "analog-input:1".parse().unwrap();
        let bi1: ObjectId = "binary-input:1".parse().unwrap();
        let rpm = ReadPropertyMultiple(vec![
            (ai1, vec![PropertyRef::of(85), PropertyRef::of(111)]),
            (bi1, vec![PropertyRef::of(85)]),
            ("analog-input:2".parse().unwrap(), vec![PropertyRef::of(85)]),
        ]);
        let a = d.answer(&request(14, &rpm.encode()), from, &plant, 0, &counts);
        let r = a.reply.unwrap();
        let Some(Apdu::ComplexAck { body, .. }) = bacnet::decode(&r).unwrap().apdu else {
            panic!()
        };
        let ack = ReadPropertyMultipleAck::decode(body).unwrap();
        assert_eq!(ack.0[0].1[0].1, Ok(vec![Value::Real(7.5)]));
        assert_eq!(ack.0[1].1[0].1, Ok(vec![Value::Enumerated(1)]));
        // The plant has no return temperature: the object says it is in fault.
        assert_eq!(ack.0[2].1[0].1, Ok(vec![Value::Real(0.0)]));

        let sub = SubscribeCov {
            process: 4,
            object: ai1,
            confirmed: Some(false),
            lifetime: Some(60),
        };
        let a = d.answer(&request(5, &sub.encode()), from, &plant, 0, &counts);
        assert!(matches!(
            bacnet::decode(&a.reply.unwrap()).unwrap().apdu,
            Some(Apdu::SimpleAck { .. })
        ));
        assert_eq!(d.notifications(&plant, 1_000).len(), 1, "the first at once");
        assert!(d.notifications(&plant, 2_000).is_empty(), "nothing moved");
        let warmer = |m: &str| {
            if m == "supply_temp_c" {
                Some(7.6)
            } else {
                plant(m)
            }
        };
        let n = d.notifications(&warmer, 3_000);
        assert_eq!(n[0].0, from);
        let Some(Apdu::Unconfirmed { body, .. }) = bacnet::decode(&n[0].1).unwrap().apdu else {
            panic!()
        };
        let cov = CovNotification::decode(body).unwrap();
        assert_eq!((cov.process, cov.object, cov.time_remaining), (4, ai1, 57));
        assert!(d.notifications(&warmer, 61_000).is_empty(), "lapsed");

        let write = |object: &str, v: f32| {
            bacnet::encode_write_property(&bacnet::Write {
                object: object.parse().unwrap(),
                value: PropertyValue {
                    property: PropertyRef::of(85),
                    values: vec![Value::Real(v)],
                    priority: Some(8),
                },
            })
        };
        let a = d.answer(
            &request(15, &write("analog-value:1", 13.0)),
            from,
            &plant,
            0,
            &counts,
        );
        assert_eq!(a.written.unwrap().value, 13.0);
        let a = d.answer(
            &request(15, &write("analog-input:1", 13.0)),
            from,
            &plant,
            0,
            &counts,
        );
        assert!(a.written.is_none());
        assert!(matches!(
            bacnet::decode(&a.reply.unwrap()).unwrap().apdu,
            Some(Apdu::Error {
                code: error::WRITE_ACCESS_DENIED,
                ..
            })
        ));
    }
}
