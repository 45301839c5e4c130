//! [`MacAddr`]: an Ethernet MAC address, parsed once for every side of the protocol (catalog,
//! netboot, API, agent) and shown the way the catalog stores it: `aa:bb:cc:dd:ee:ff`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// A text that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")]
pub struct BadMac(pub String);

impl MacAddr {
    /// `aabbccddeeff`: for names and file names.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = BadMac;
    /// Accepts `:` or `-` separated pairs, Cisco's dotted quads (`aabb.ccdd.eeff`) and 12 bare
    /// hex digits, in any case, with surrounding white space.
    fn from_str(s: &str) -> Result<Self, BadMac> {
        let t = s.trim();
        let groups: Vec<&str> = if t.len() == 12 {
            vec![t]
        } else if t.contains(':') {
            t.split(':').collect()
        } else if t.contains('-') {
            t.split('-').collect()
        } else {
            t.split('.').collect()
        };
        let well_formed = match groups.len() {
            1 => groups[0].len() == 12,
            3 => groups.iter().all(|g| g.len() == 4),
            6 => groups.iter().all(|g| g.len() == 2),
            _ => false,
        };
        let digits = groups.concat();
        if !well_formed || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadMac(s.to_string()));
        }
        let mut out = [0u8; 6];
        hex::decode_to_slice(&digits, &mut out).map_err(|_| BadMac(s.to_string()))?;
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_accepted_form() {
        for s in ["AA-BB-CC-00-11-22", "aa:bb:cc:00:11:22", "aabb.cc00.1122", "AABBCC001122", " aa:bb:cc:00:11:22\n"] {
            let m: MacAddr = s.parse().unwrap();
            assert_eq!(m.to_string(), "aa:bb:cc:00:11:22", "{s}");
            assert_eq!(m.hex(), "aabbcc001122");
        }
        for s in ["aa:bb", "aa:bb:cc:00:11:2g", "aa:bb:cc:00:11:222", "aabbcc00112", "", "aa:bb-cc:00:11:22"] {
            let e = s.parse::<MacAddr>().unwrap_err();
            assert!(e.to_string().contains("not a MAC address"), "{s}");
        }
    }

    proptest! {
        #[test]
        fn display_parses_back(b in any::<[u8; 6]>()) {
            let m = MacAddr(b);
            prop_assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
            prop_assert_eq!(m.hex().parse::<MacAddr>().unwrap(), m);
            let json = serde_json::to_string(&m).unwrap();
            prop_assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), m);
        }
    }
}
