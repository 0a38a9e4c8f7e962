//! The JSON of the typed helpers (`get_as`/`set_as`, `send_as`, `json`...):
//! one encoding for the store and the bus, and errors that say what was
//! being encoded or decoded. `what` is only called on an error.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// `value` as JSON; on failure, "cannot encode {what} as JSON: ...".
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<Bytes, Error> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::invalid_value(format!("cannot encode {} as JSON: {e}", what())))
}

/// `bytes` decoded from JSON as a `T`; on failure, "{what} is not a JSON
/// T: ...".
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::invalid_value(format!(
            "{} is not a JSON {}: {e}",
            what(),
            std::any::type_name::<T>()
        ))
    })
}
