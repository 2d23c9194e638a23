//! LAN names and the one parser of "`/` or `/lan/NAME`" that every transport's URL uses.

use std::fmt;

/// A validated LAN name: `[A-Za-z0-9_-]{1,64}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct LanName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid LAN name {0:?}: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-', as in /lan/physics-101"
)]
pub(crate) struct InvalidLanName(pub(crate) String);

impl LanName {
    pub(crate) fn new(name: &str) -> Result<Self, InvalidLanName> {
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(LanName(name.to_owned()))
        } else {
            // Cut what we echo back: the name is untrusted and may be huge.
            Err(InvalidLanName(name.chars().take(80).collect()))
        }
    }

    pub(crate) fn default_lan() -> Self {
        LanName("default".to_owned())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A token's `lan` claim as an operator types it: a LAN name, or a prefix of one ending in
/// `*` (`physics-*`; `*` alone is every LAN).
pub(crate) fn check_lan_pattern(pattern: &str) -> Result<(), String> {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    if name.is_empty() && pattern == "*" {
        return Ok(());
    }
    LanName::new(name).map(|_| ()).map_err(|e| e.to_string())
}

/// The LAN a join path names: `/` (LAN `default`) or `/lan/NAME`, query ignored; `None`
/// for any other path. WebSocket and WebTransport sessions use the same paths.
pub(crate) fn lan_from_path(path: &str) -> Option<Result<LanName, InvalidLanName>> {
    let path = path.split('?').next().unwrap_or("");
    if path == "/" || path.is_empty() {
        return Some(Ok(LanName::default_lan()));
    }
    path.strip_prefix("/lan/").map(LanName::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_names() {
        assert!(LanName::new("physics-101").is_ok());
        assert!(LanName::new("a_B-9").is_ok());
        assert!(LanName::new("").is_err());
        assert!(LanName::new(&"x".repeat(65)).is_err());
        assert!(LanName::new("with space").is_err());
        assert!(LanName::new("../etc").is_err());
        let long = LanName::new(&"é".repeat(1000)).unwrap_err();
        assert_eq!(long.0.chars().count(), 80);
    }

    #[test]
    fn join_paths() {
        assert_eq!(lan_from_path("/"), Some(Ok(LanName::default_lan())));
        assert_eq!(lan_from_path("/?x=1"), Some(Ok(LanName::default_lan())));
        assert_eq!(
            lan_from_path("/lan/physics-101?token=abc"),
            Some(Ok(LanName::new("physics-101").unwrap()))
        );
        assert!(matches!(lan_from_path("/lan/bad name"), Some(Err(_))));
        assert_eq!(lan_from_path("/other"), None);
    }
}
