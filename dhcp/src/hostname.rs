//! Host names from clients (option 12) become DNS labels on the LAN, so they are cleaned up.

/// Longest DNS label (RFC 1035 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Turn a client-supplied host name into a DNS label, or `None` if it cannot be one.
///
/// Only the first label of an FQDN is kept (`vm1.example.org` -> `vm1`); ASCII is
/// lowercased and `_` becomes `-` (common in Windows names). Any other character outside
/// `[a-z0-9-]` makes the whole name invalid rather than silently merging different names.
/// Leading/trailing `-` are trimmed and the result is cut to 63 bytes.
pub fn sanitize(raw: &str) -> Option<String> {
    let first = raw.split('.').next().unwrap_or_default();
    let mut label = String::with_capacity(first.len().min(MAX_LABEL_LEN));
    for c in first.chars() {
        match c {
            'a'..='z' | '0'..='9' | '-' => label.push(c),
            'A'..='Z' => label.push(c.to_ascii_lowercase()),
            '_' => label.push('-'),
            _ => return None,
        }
    }
    label.truncate(MAX_LABEL_LEN);
    let label = label.trim_matches('-');
    (!label.is_empty()).then(|| label.to_owned())
}

/// Whether `label` is already a clean DNS label as [`sanitize`] would produce.
pub fn is_valid_label(label: &str) -> bool {
    sanitize(label).as_deref() == Some(label)
}

/// Whether `name` is a dotted sequence of valid labels, at most 253 bytes.
pub fn is_valid_domain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_valid_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_cases() {
        assert_eq!(sanitize("Debian").as_deref(), Some("debian"));
        assert_eq!(sanitize("vm1.example.org").as_deref(), Some("vm1"));
        assert_eq!(sanitize("DESKTOP_AB12").as_deref(), Some("desktop-ab12"));
        assert_eq!(sanitize("-edge-").as_deref(), Some("edge"));
        assert_eq!(sanitize(&"a".repeat(100)).map(|s| s.len()), Some(63));
        assert_eq!(sanitize(""), None);
        assert_eq!(sanitize("---"), None);
        assert_eq!(sanitize(".hidden"), None);
        assert_eq!(sanitize("bad name"), None);
        assert_eq!(sanitize("caf\u{e9}"), None);
        assert_eq!(sanitize("x\0y"), None);
    }

    #[test]
    fn domains() {
        assert!(is_valid_domain("default.lan"));
        assert!(is_valid_domain("physics-101.lan"));
        assert!(!is_valid_domain("Default.lan"));
        assert!(!is_valid_domain("a..b"));
        assert!(!is_valid_domain("trailing."));
    }
}
