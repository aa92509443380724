//! Reading rows by column name into typed values. A value that does not fit its type (an
//! unknown state, JSON that does not parse, a NULL where none belongs) is
//! [`StoreError::Corrupt`], naming the column: never a default that would silently change
//! what the services decide.

use cloudvpp_store::{Result, StoreError};
use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::{Any, Row};

/// The column `col` as `T`.
pub(crate) fn get<'r, T>(r: &'r AnyRow, col: &'static str) -> Result<T>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    r.try_get(col).map_err(|e| StoreError::corrupt(col, e))
}

/// The text column `col`, parsed by `parse` (an enum's spelling): None from `parse` is corrupt.
pub(crate) fn parsed<T>(
    r: &AnyRow,
    col: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T> {
    let text: &str = get(r, col)?;
    parse(text).ok_or_else(|| StoreError::corrupt(col, format!("unknown value {text:?}")))
}

#[allow(dead_code)] // for nullable enum columns
/// The nullable text column `col`, parsed by `parse`.
pub(crate) fn parsed_opt<T>(
    r: &AnyRow,
    col: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    match get::<Option<&str>>(r, col)? {
        None => Ok(None),
        Some(text) => parse(text)
            .map(Some)
            .ok_or_else(|| StoreError::corrupt(col, format!("unknown value {text:?}"))),
    }
}

/// The JSON text column `col`, deserialised.
pub(crate) fn json<T: DeserializeOwned>(r: &AnyRow, col: &'static str) -> Result<T> {
    let text: &str = get(r, col)?;
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(col, e))
}

/// The nullable JSON text column `col`, deserialised.
pub(crate) fn json_opt<T: DeserializeOwned>(r: &AnyRow, col: &'static str) -> Result<Option<T>> {
    match get::<Option<&str>>(r, col)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| StoreError::corrupt(col, e)),
    }
}
