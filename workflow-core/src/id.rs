//! Instance ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Random bits without a dependency: std seeds `RandomState` randomly.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

/// An instance id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(String);

/// A string, so that workflow inputs, outputs and states can hold ids (a
/// workflow told which instance to signal, say).
impl schemars::JsonSchema for InstanceId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "InstanceId".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A workflow instance's id (a UUIDv7)."
        })
    }
}

impl InstanceId {
    /// A fresh, time-ordered id.
    // No `Default`: a `#[derive(Default)]` struct or a `#[serde(default)]`
    // field holding an id would mint one that names no instance.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        InstanceId(uuid::Uuid::now_v7().to_string())
    }

    /// A time-ordered id minted for creation time `ms` (milliseconds since
    /// the Unix epoch). Stores may rely on an instance's id sorting with its
    /// `created_at`.
    pub fn at(ms: i64) -> Self {
        // uuid's own monotonic context would move an older `ms` forward to
        // the newest time it has seen; stores rely on the id carrying `ms`.
        // So the layout is built here: `ms`, then a counter that orders ids
        // minted in the same millisecond, then random bits.
        static LAST: std::sync::Mutex<(u64, u64)> = std::sync::Mutex::new((0, 0));
        let ms = uuid_millis(ms);
        let random = random_u64();
        let counter = {
            let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
            match ms.cmp(&last.0) {
                std::cmp::Ordering::Equal => {
                    last.1 += 1;
                    last.1
                }
                std::cmp::Ordering::Greater => {
                    // Room for 2^33 more ids in this millisecond.
                    *last = (ms, random >> 31);
                    last.1
                }
                std::cmp::Ordering::Less => random >> 31,
            }
        };
        // 34 counter bits land where the version and variant bits leave room:
        // 12 in rand_a, then 6 + 16 at the start of rand_b.
        let mut bytes = [0u8; 10];
        bytes[0] = ((counter >> 30) & 0x0f) as u8;
        bytes[1] = (counter >> 22) as u8;
        bytes[2] = ((counter >> 16) & 0x3f) as u8;
        bytes[3] = (counter >> 8) as u8;
        bytes[4] = counter as u8;
        bytes[5..10].copy_from_slice(&random.to_le_bytes()[..5]);
        let uuid = uuid::Builder::from_unix_timestamp_millis(ms, &bytes).into_uuid();
        InstanceId(uuid.to_string())
    }

    /// The smallest id [`InstanceId::at`] can mint for time `ms`: every id
    /// minted before `ms` sorts below it, as text too. Stores bound scans
    /// by creation time with it.
    pub fn floor_at(ms: i64) -> Self {
        let ms = uuid_millis(ms);
        let uuid = uuid::Builder::from_unix_timestamp_millis(ms, &[0; 10]).into_uuid();
        InstanceId(uuid.to_string())
    }

    /// Wraps an id read from a store or typed by a user.
    pub fn from_string(id: impl Into<String>) -> Self {
        InstanceId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for InstanceId {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(InstanceId(s.to_owned()))
    }
}

impl From<&str> for InstanceId {
    fn from(s: &str) -> Self {
        InstanceId(s.to_owned())
    }
}

impl From<String> for InstanceId {
    fn from(s: String) -> Self {
        InstanceId(s)
    }
}

impl AsRef<str> for InstanceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Hashes and compares as its text (derived from the one field), so a map
// keyed by ids can be read with a `&str`.
impl std::borrow::Borrow<str> for InstanceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> Self {
        id.0
    }
}

/// `ms` within what a UUIDv7 holds (48 bits, until the year 10889): a
/// later time is the last one, not wrapped to an early one (which would
/// make "before the year 20000" match nothing).
fn uuid_millis(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).min((1 << 48) - 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_floor_sorts_between_the_ids_of_two_milliseconds() {
        for ms in [1, 1_700_000_000_000, 1_700_000_000_001] {
            let floor = InstanceId::floor_at(ms);
            for _ in 0..100 {
                assert!(InstanceId::at(ms - 1).as_str() < floor.as_str());
                assert!(InstanceId::at(ms).as_str() >= floor.as_str());
            }
        }
    }

    use super::*;

    /// Past what 48 bits hold, a time is the last one, not a wrapped one:
    /// "ended before the year 20000" must match every id.
    #[test]
    fn floors_past_the_uuids_range_sort_above_every_id() {
        let now = InstanceId::at(1_700_000_000_000);
        for ms in [1 << 48, i64::MAX] {
            // (`at` clamps the same way; not minted here, as a mint moves
            // the process's last time, which the other tests share.)
            assert!(InstanceId::floor_at(ms).as_str() > now.as_str(), "{ms}");
        }
    }

    #[test]
    fn ids_sort_by_creation() {
        let ids: Vec<InstanceId> = (0..100).map(|_| InstanceId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn ids_minted_at_a_time_sort_by_it() {
        let a = InstanceId::at(1_700_000_000_000);
        let b = InstanceId::at(1_700_000_000_001);
        let c = InstanceId::at(1_800_000_000_000);
        assert!(a < b && b < c);
        // An older time after a newer one keeps its own time.
        let old = InstanceId::at(1_600_000_000_000);
        assert!(old < a, "{old} carries its own, older time");
        let same: Vec<InstanceId> = (0..1000)
            .map(|_| InstanceId::at(1_900_000_000_000))
            .collect();
        assert!(
            same.windows(2).all(|w| w[0] < w[1]),
            "ids minted in one millisecond keep their order"
        );
        assert!(same.iter().all(|id| uuid::Uuid::parse_str(id.as_str())
            .unwrap()
            .get_version_num()
            == 7));
        assert!(a.as_str().starts_with("018bcfe5-6800"), "{a}");
    }
}
