//! Secrets (tokens, passwords) kept out of logs and `Debug` output.

/// A secret whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// A form safe to show: the first 4 characters of long secrets, then stars.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Masks a secret for display: `abcd****` for long ones, `****` otherwise.
pub fn mask(s: &str) -> String {
    if s.chars().count() >= 12 {
        format!("{}****", s.chars().take(4).collect::<String>())
    } else {
        "****".to_owned()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MASKED")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        let s = Secret::new("supersecrettoken");
        assert_eq!(format!("{s:?}"), "MASKED");
        assert_eq!(s.masked(), "supe****");
        assert_eq!(mask("short"), "****");
    }
}
