//! Answers: success with `data` (and a mutation's `revision`), or an error code and message.

use serde::{Deserialize, Serialize, Serializer, de::DeserializeOwned};
use serde_json::Value;
use thiserror::Error;

use crate::{
    VERSION, data::RevisionMeta, display_as_serialized, parse_as_deserialized, request::DecodeError,
};

/// Why a request failed (docs/api.md, "Error codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a request: not JSON, another version, an unknown operation, a
    /// missing or mistyped argument.
    BadRequest,
    /// The configuration the change would make does not validate, or the change is not
    /// allowed (a `[daemon]` change, a VIP or backend that already exists ...).
    Invalid,
    /// Unknown VIP, backend or revision.
    NotFound,
    /// `base_revision` is not the current revision.
    Conflict,
    /// The peer is neither root nor the daemon's user.
    Permission,
    /// The daemon failed (a map write, the revision store), or is stopping.
    Internal,
    /// The daemon serves as many API connections as it takes at once: retry shortly.
    Busy,
    /// Fleet mode: etcd cannot be reached or has no quorum, so the fleet's configuration
    /// cannot change now; the node keeps serving the revision it runs.
    Unavailable,
}

display_as_serialized!(ErrorCode);
parse_as_deserialized!(ErrorCode);

/// A refused request: `{"code": ..., "message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    /// What failed and what to do.
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl std::fmt::Display) -> ApiError {
        ApiError {
            code,
            message: message.to_string(),
        }
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, e)
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The operation's data, one of the types of [`crate::data`].
    pub data: Value,
    /// For a mutation: the revision it made.
    pub revision: Option<u64>,
}

impl Answer {
    /// `data` as the type the operation answers with.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }
}

/// One answer line.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Ok(Answer),
    Err(ApiError),
}

/// A reply as read. Fields are in alphabetical order, as [`WireReplyOut`] writes them.
#[derive(Deserialize)]
struct WireReplyIn {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    error: Option<ApiError>,
    ok: bool,
    #[serde(default)]
    revision: Option<u64>,
    v: u64,
}

/// A reply as written. The daemon writes keys in alphabetical order (docs/api.md): the
/// fields here and in [`ApiError`] are declared so, and `data` is a `serde_json::Value`,
/// whose maps are sorted.
#[derive(Serialize)]
struct WireReplyOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ApiError>,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    v: u32,
}

impl Reply {
    /// A read's answer. Data that does not serialize (it cannot happen with the types of
    /// [`crate::data`]) is answered as an `internal` error.
    pub fn data(data: &impl Serialize) -> Reply {
        Reply::with_revision(data, None)
    }

    /// A mutation's answer: the revision it made, as data and as `revision`.
    pub fn revision(meta: &RevisionMeta) -> Reply {
        Reply::with_revision(meta, Some(meta.revision))
    }

    fn with_revision(data: &impl Serialize, revision: Option<u64>) -> Reply {
        match serde_json::to_value(data) {
            Ok(data) => Reply::Ok(Answer { data, revision }),
            Err(e) => Reply::error(
                ErrorCode::Internal,
                format!("the daemon could not encode its answer ({e}); please report this bug"),
            ),
        }
    }

    pub fn error(code: ErrorCode, message: impl std::fmt::Display) -> Reply {
        Reply::Err(ApiError::new(code, message))
    }

    pub fn into_result(self) -> Result<Answer, ApiError> {
        match self {
            Reply::Ok(a) => Ok(a),
            Reply::Err(e) => Err(e),
        }
    }

    /// The answer line, `\n` included, keys in alphabetical order.
    pub fn to_line(&self) -> String {
        let mut line =
            serde_json::to_string(self).expect("a reply serializes: its data is a JSON value");
        line.push('\n');
        line
    }

    /// Decode one answer line (without or with its `\n`).
    pub fn from_line(line: &str) -> Result<Reply, serde_json::Error> {
        serde_json::from_str(line)
    }
}

impl From<Result<Answer, ApiError>> for Reply {
    fn from(r: Result<Answer, ApiError>) -> Reply {
        match r {
            Ok(a) => Reply::Ok(a),
            Err(e) => Reply::Err(e),
        }
    }
}

impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let wire = match self {
            Reply::Ok(a) => WireReplyOut {
                data: Some(&a.data),
                error: None,
                ok: true,
                revision: a.revision,
                v: VERSION,
            },
            Reply::Err(e) => WireReplyOut {
                data: None,
                error: Some(e),
                ok: false,
                revision: None,
                v: VERSION,
            },
        };
        wire.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let w = WireReplyIn::deserialize(d)?;
        if w.v != u64::from(VERSION) {
            return Err(D::Error::custom(format!(
                "an answer of API version {}, not {VERSION}",
                w.v
            )));
        }
        match (w.ok, w.error) {
            (true, _) => Ok(Reply::Ok(Answer {
                data: w.data.unwrap_or(Value::Null),
                revision: w.revision,
            })),
            (false, Some(e)) => Ok(Reply::Err(e)),
            (false, None) => Err(D::Error::custom("\"ok\":false without an error")),
        }
    }
}
