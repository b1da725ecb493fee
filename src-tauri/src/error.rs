//! The one error type commands return. It serializes as `{ kind, message, field? }` so the UI
//! can put a validation message next to the right input. Messages never contain tokens.

use serde::{ser::SerializeStruct, Serialize, Serializer};

use ggrok_tunnel::saved::StoreError;

use crate::tunnels::ManagerError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// User input is not acceptable; `field` names the input.
    #[error("{message}")]
    Invalid {
        /// `port`, `subdomain`, `serverId`, `url`, `host`, `name`.
        field: &'static str,
        /// What to fix.
        message: String,
    },
    /// No saved tunnel, server or exchange with that id.
    #[error("{0} not found")]
    NotFound(String),
    /// The server is still used by saved tunnels.
    #[error("{0}")]
    InUse(String),
    /// Saving settings failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Starting, replaying or inspecting a tunnel failed.
    #[error(transparent)]
    Tunnel(#[from] ManagerError),
    /// The OS refused (clipboard, browser).
    #[error("{0}")]
    System(String),
}

impl Error {
    /// An invalid-input error.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid",
            Self::NotFound(_) => "notFound",
            Self::InUse(_) => "inUse",
            Self::Store(_) => "store",
            Self::Tunnel(_) => "tunnel",
            Self::System(_) => "system",
        }
    }
}

impl Serialize for Error {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let field = match self {
            Self::Invalid { field, .. } => Some(*field),
            _ => None,
        };
        let mut st = s.serialize_struct("Error", 3)?;
        st.serialize_field("kind", self.kind())?;
        st.serialize_field("message", &self.to_string())?;
        st.serialize_field("field", &field)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_kind_message_field() {
        let v = serde_json::to_value(Error::invalid("port", "too big")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "invalid", "message": "too big", "field": "port"})
        );
        let v = serde_json::to_value(Error::NotFound("tunnel x".into())).unwrap();
        assert_eq!(v["kind"], "notFound");
        assert_eq!(v["field"], serde_json::Value::Null);
    }
}
