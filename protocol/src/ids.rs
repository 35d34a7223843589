//! Identifiers: validated newtypes for every name and id that crosses a boundary.
//!
//! Validation happens at parse time (`FromStr`, and serde via `TryFrom<String>`), so a value
//! of one of these types is always well-formed; the API turns a parse failure into a 400 that
//! names the field.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an identifier failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct IdError {
    /// Which kind of identifier (e.g. `serial`, `mac`).
    pub kind: &'static str,
    /// The offending input, truncated to 80 characters.
    pub value: String,
    /// What rule it broke.
    pub reason: &'static str,
}

impl IdError {
    fn new(kind: &'static str, value: &str, reason: &'static str) -> Self {
        IdError {
            kind,
            value: value.chars().take(80).collect(),
            reason,
        }
    }
}

/// Checks the shape shared by every operator-chosen name: 1..=max chars of
/// `[A-Za-z0-9._-]`, starting with a letter or digit.
fn check_name(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::new(kind, s, "must not be empty"));
    }
    if s.len() > max {
        return Err(IdError::new(kind, s, "too long"));
    }
    let first = s.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(IdError::new(kind, s, "must start with a letter or digit"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(IdError::new(
            kind,
            s,
            "only letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                check_name($kind, s, $max)?;
                Ok($name(s.to_owned()))
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                check_name($kind, &s, $max)?;
                Ok($name(s))
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some("^[A-Za-z0-9][A-Za-z0-9._-]*$"))
                    .max_length(Some($max))
                    .description(Some(concat!("A ", $kind, " name")))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

name_id!(
    /// A site (datacenter) name, e.g. `ams1`.
    SiteId, "site", 63
);
name_id!(
    /// A rack name, unique across the fleet, e.g. `ams1-r12`. One rack agent serves one rack.
    RackId, "rack", 63
);
name_id!(
    /// A project (tenant) name.
    ProjectId, "project", 63
);
name_id!(
    /// A user name.
    UserName, "user", 63
);
name_id!(
    /// A hardware serial number as printed on the chassis and reported in DMI/FRU.
    /// Serials are compared exactly (case-sensitive).
    Serial, "serial", 64
);
name_id!(
    /// A tag attached to inventory and nodes, used to select them.
    Tag, "tag", 63
);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub uuid::Uuid);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                uuid::Uuid::parse_str(s).map($name).map_err(|_| IdError::new($kind, s, "not a UUID"))
            }
        }
    };
}

uuid_id!(
    /// A node's stable id, assigned by the coordinator when the node is first registered.
    NodeId, "node id"
);
uuid_id!(
    /// An API token's public id (the part that may be shown and logged; the secret never is).
    TokenId, "token id"
);

/// A coordinator's Raft member id. Chosen by the operator, unique within the cluster.
pub type CoordinatorId = u64;

/// The Raft log index at which a change was applied; the desired state's version number.
pub type Revision = u64;

/// An Ethernet MAC address. Parses `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` and
/// `aabb.ccdd.eeff` in either case; always prints lowercase with colons.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let hex: String = s
            .chars()
            .filter(|c| !matches!(c, ':' | '-' | '.'))
            .collect();
        let separators = s.len() - hex.len();
        if hex.len() != 12 || !(separators == 0 || separators == 5 || separators == 2) {
            return Err(IdError::new(
                "mac",
                s,
                "expected six hex octets like aa:bb:cc:dd:ee:ff",
            ));
        }
        let mut out = [0u8; 6];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).map_err(|_| {
                IdError::new("mac", s, "expected six hex octets like aa:bb:cc:dd:ee:ff")
            })?;
        }
        Ok(Mac(out))
    }
}
impl TryFrom<String> for Mac {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}
impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}
impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}
impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
impl utoipa::PartialSchema for Mac {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .examples(["52:54:00:12:34:56"])
            .description(Some("Ethernet MAC address"))
            .into()
    }
}
impl utoipa::ToSchema for Mac {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms() {
        let want = Mac([0x52, 0x54, 0, 0x12, 0x34, 0xab]);
        for s in [
            "52:54:00:12:34:ab",
            "52-54-00-12-34-AB",
            "5254.0012.34ab",
            "5254001234ab",
        ] {
            assert_eq!(s.parse::<Mac>().unwrap(), want, "{s}");
        }
        assert_eq!(want.to_string(), "52:54:00:12:34:ab");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:zz",
            "52:54:00:12:34:ab:cd",
            "5:254:00:12:34:ab:",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!("SN-123.a_b".parse::<Serial>().is_ok());
        assert!("-x".parse::<Serial>().is_err());
        assert!("a b".parse::<RackId>().is_err());
        assert!("".parse::<SiteId>().is_err());
        assert!("x".repeat(65).parse::<Serial>().is_err());
        let e = serde_json::from_str::<RackId>("\"a/b\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid rack"), "{e}");
    }

    #[test]
    fn postcard_round_trip() {
        let m: Mac = "52:54:00:12:34:ab".parse().unwrap();
        let bytes = postcard::to_stdvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<Mac>(&bytes).unwrap(), m);
    }
}
