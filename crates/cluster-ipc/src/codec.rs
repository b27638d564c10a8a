//! postcard encoding of every value that crosses a channel or pipe.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ChannelError;

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ChannelError> {
    // Most frames are small: one allocation instead of a chain of reallocations from empty.
    postcard::to_extend(value, Vec::with_capacity(128)).map_err(ChannelError::Encode)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ChannelError> {
    postcard::from_bytes(bytes).map_err(ChannelError::Decode)
}
