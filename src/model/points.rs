//! The point registry: sources intern `(site, device, metric)` into a [`PointId`] once;
//! after that a reading is four numbers, and every device and point has an index.

use crate::model::vocabulary::{self, MetricSpec};
use crate::model::DeviceKind;
use rustc_hash::FxHashMap;

/// Index of a point (one metric of one device) in the registry.
pub type PointId = u32;
/// Index of a device in the registry.
pub type DeviceId = u32;

/// What the registry knows of a device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Site name.
    pub site: String,
    /// Device name.
    pub name: String,
    /// Device kind.
    pub kind: DeviceKind,
    /// Kind as written in the capture (differs from `kind` for unknown kinds).
    pub kind_name: String,
    /// Its points, in order of first appearance.
    pub points: Vec<PointId>,
    /// Each point's [`metric_hash`], in the same order: a metric is found by name in
    /// one short array, without a string comparison per point.
    hashes: Vec<u64>,
    /// Its site's index in the registry's sites.
    site_index: u32,
}

impl DeviceInfo {
    /// The device's point measuring `metric`, if it has one.
    pub fn point_named(&self, registry: &Registry, metric: &str) -> Option<PointId> {
        let h = metric_hash(metric);
        self.hashes
            .iter()
            .zip(&self.points)
            .find(|&(&ph, &p)| ph == h && registry.point(p).metric == metric)
            .map(|(_, &p)| p)
    }
}

/// A metric name's hash, for [`DeviceInfo::point_named`].
fn metric_hash(metric: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(metric)
}

/// What the registry knows of a point.
#[derive(Debug, Clone)]
pub struct PointInfo {
    /// Owning device.
    pub device: DeviceId,
    /// Metric name.
    pub metric: String,
    /// Vocabulary entry, if the metric is known for the device's kind.
    pub spec: Option<&'static MetricSpec>,
}

/// Why a point could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The capture names more distinct points than the configured bound.
    #[error("more than {0} distinct points (raise pipeline.max_points if this is real)")]
    TooManyPoints(usize),
}

/// One site's devices: by name, and in id order.
#[derive(Debug, Default)]
struct Site {
    by_name: FxHashMap<String, DeviceId>,
    devices: Vec<DeviceId>,
}

/// Interns sites, devices and points. Lookups by name allocate nothing.
#[derive(Debug)]
pub struct Registry {
    devices: Vec<DeviceInfo>,
    points: Vec<PointInfo>,
    /// Each site's index in `sites`, by name.
    site_index: FxHashMap<String, u32>,
    sites: Vec<Site>,
    max_points: usize,
    /// The device named last: a capture names one device many times in a row.
    last: Option<DeviceId>,
    /// This registry among all of the process's (caches of its answers check it).
    id: u64,
}

impl Registry {
    /// An empty registry that refuses to grow past `max_points` points.
    pub fn new(max_points: usize) -> Self {
        Self {
            devices: Vec::new(),
            points: Vec::new(),
            site_index: FxHashMap::default(),
            sites: Vec::new(),
            max_points,
            last: None,
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        }
    }

    /// This registry's identity, unique in the process (never 0).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The most points it registers.
    pub fn max_points(&self) -> usize {
        self.max_points
    }

    /// Points and devices registered.
    pub fn size(&self) -> usize {
        self.points.len() + self.devices.len()
    }

    /// Lets at most `more` further points and devices be registered (from now until the
    /// next call); one budget shared by several registries is kept this way.
    pub fn allow(&mut self, more: usize) {
        self.max_points = self
            .points
            .len()
            .max(self.devices.len())
            .saturating_add(more);
    }

    /// The point for `(site, device, metric)`, registering it (and its device) if new. A
    /// device keeps the kind it was first seen with.
    pub fn intern(
        &mut self,
        site: &str,
        device: &str,
        kind: &str,
        metric: &str,
    ) -> Result<PointId, RegistryError> {
        let dev = self.intern_device(site, device, kind)?;
        let info = &self.devices[dev as usize];
        if let Some(p) = info.point_named(self, metric) {
            return Ok(p);
        }
        if self.points.len() >= self.max_points {
            return Err(RegistryError::TooManyPoints(self.max_points));
        }
        let id = self.points.len() as PointId;
        let spec = vocabulary::lookup(info.kind, metric);
        self.points.push(PointInfo {
            device: dev,
            metric: metric.to_owned(),
            spec,
        });
        let info = &mut self.devices[dev as usize];
        info.points.push(id);
        info.hashes.push(metric_hash(metric));
        Ok(id)
    }

    /// The device for `(site, device)`, registering it if new. An empty `kind` (a device
    /// named only by a command so far) is replaced by the kind of its first reading.
    pub fn intern_device(
        &mut self,
        site: &str,
        device: &str,
        kind: &str,
    ) -> Result<DeviceId, RegistryError> {
        let last = self.last.filter(|&d| {
            self.devices[d as usize].name == device && self.devices[d as usize].site == site
        });
        if let Some(d) = last.or_else(|| {
            let &s = self.site_index.get(site)?;
            self.sites[s as usize].by_name.get(device).copied()
        }) {
            self.last = Some(d);
            // A device first named by a command learns its kind from its first reading.
            let info = &mut self.devices[d as usize];
            if info.kind_name.is_empty() && !kind.is_empty() {
                info.kind = DeviceKind::parse(kind);
                info.kind_name = kind.to_owned();
            }
            return Ok(d);
        }
        if self.devices.len() >= self.max_points {
            return Err(RegistryError::TooManyPoints(self.max_points));
        }
        let id = self.devices.len() as DeviceId;
        let site_index = match self.site_index.get(site) {
            Some(&s) => s,
            None => {
                let s = self.sites.len() as u32;
                self.sites.push(Site::default());
                self.site_index.insert(site.to_owned(), s);
                s
            }
        };
        let place = &mut self.sites[site_index as usize];
        place.by_name.insert(device.to_owned(), id);
        place.devices.push(id);
        self.devices.push(DeviceInfo {
            site: site.to_owned(),
            name: device.to_owned(),
            kind: DeviceKind::parse(kind),
            kind_name: kind.to_owned(),
            points: Vec::new(),
            hashes: Vec::new(),
            site_index,
        });
        self.last = Some(id);
        Ok(id)
    }

    /// A device by id.
    pub fn device(&self, id: DeviceId) -> &DeviceInfo {
        &self.devices[id as usize]
    }

    /// A point by id.
    pub fn point(&self, id: PointId) -> &PointInfo {
        &self.points[id as usize]
    }

    /// All devices, indexed by id.
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// The devices of `device`'s site, itself included, in id order (a site's relations
    /// look at its devices without going through every site's).
    pub fn site_devices(&self, device: DeviceId) -> &[DeviceId] {
        &self.sites[self.devices[device as usize].site_index as usize].devices
    }

    /// Number of points.
    pub fn point_count(&self) -> usize {
        self.points.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sites_devices_are_its_own_in_the_order_they_came() {
        // Two sites named alternately, devices of the same name on both, one device
        // named again: each site lists its own devices, in id order, each once.
        let mut reg = Registry::new(100);
        let mut want: [Vec<DeviceId>; 2] = Default::default();
        for (i, name) in ["ups-1", "ups-1", "chiller-1", "meter", "ups-1", "chiller-1"]
            .iter()
            .enumerate()
        {
            let site = ["a", "b"][i % 2];
            let p = reg.intern(site, name, "", "x").unwrap();
            let d = reg.point(p).device;
            if !want[i % 2].contains(&d) {
                want[i % 2].push(d);
            }
        }
        for ws in &want {
            for &d in ws {
                assert_eq!(reg.site_devices(d), &ws[..]);
            }
        }
        let all: Vec<DeviceId> = (0..reg.devices().len() as DeviceId).collect();
        let mut listed = [&want[0][..], &want[1][..]].concat();
        listed.sort_unstable();
        assert_eq!(listed, all);
    }

    #[test]
    fn interning_is_stable_and_bounded() {
        let mut reg = Registry::new(2);
        let a = reg.intern("s", "chiller-1", "chiller", "flow_lps").unwrap();
        assert_eq!(reg.intern("s", "chiller-1", "chiller", "flow_lps"), Ok(a));
        assert!(reg.point(a).spec.is_some());
        let b = reg.intern("s", "chiller-1", "chiller", "made_up").unwrap();
        assert!(reg.point(b).spec.is_none());
        assert_eq!(
            reg.intern("s", "chiller-1", "chiller", "third"),
            Err(RegistryError::TooManyPoints(2))
        );
    }

    #[test]
    fn a_devices_metric_is_found_by_name_and_only_its_own() {
        let mut reg = Registry::new(100);
        let names = ["flow_lps", "flow_lpm", "supply_temp_c", "", "x"];
        let ids: Vec<PointId> = names
            .iter()
            .map(|m| reg.intern("s", "chiller-1", "chiller", m).unwrap())
            .collect();
        let other = reg
            .intern("s", "chiller-2", "chiller", "return_temp_c")
            .unwrap();
        let dev = reg.device(reg.point(ids[0]).device);
        for (m, &id) in names.iter().zip(&ids) {
            assert_eq!(dev.point_named(&reg, m), Some(id), "{m}");
        }
        for absent in ["flow_lp", "flow_lpsx", "return_temp_c", "X"] {
            assert_eq!(dev.point_named(&reg, absent), None, "{absent}");
        }
        let dev2 = reg.device(reg.point(other).device);
        assert_eq!(dev2.point_named(&reg, "return_temp_c"), Some(other));
    }

    #[test]
    fn the_device_named_last_is_found_again_by_site_and_name() {
        let mut reg = Registry::new(100);
        let a = reg.intern_device("s1", "ups-1", "ups").unwrap();
        // Same name on another site, another name on the same site: other devices.
        let b = reg.intern_device("s2", "ups-1", "ups").unwrap();
        let c = reg.intern_device("s2", "ups-2", "ups").unwrap();
        assert!(a != b && b != c && a != c);
        for (site, name, want) in [("s1", "ups-1", a), ("s1", "ups-1", a), ("s2", "ups-1", b)] {
            assert_eq!(reg.intern_device(site, name, "ups"), Ok(want));
        }
        // A device named first by a command (no kind) learns it on a repeat.
        let d = reg.intern_device("s1", "pdu-1", "").unwrap();
        assert_eq!(reg.intern_device("s1", "pdu-1", "pdu"), Ok(d));
        assert_eq!(reg.device(d).kind_name, "pdu");
    }
}
