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

/// The 0/1 integer column `col` as a flag; any other number is corrupt.
pub(crate) fn flag(r: &AnyRow, col: &'static str) -> Result<bool> {
    match get::<i64>(r, col)? {
        0 => Ok(false),
        1 => Ok(true),
        n => Err(StoreError::corrupt(
            col,
            format!("{n} is not a flag (0 or 1)"),
        )),
    }
}

/// Bound parameters one statement carries at most. SQLite allows 32,766, but it finds a
/// numbered parameter (`$n`) by a linear search of the statement's parameters, when
/// preparing and again when binding, so a statement's cost grows with the square of its
/// parameters: at 32,766 one upsert took over a second and held the writer that long. At
/// 1,000 that overhead is under a millisecond and the round trips saved are kept.
pub(crate) const MAX_PARAMS: usize = 1_000;

/// How many rows of `per_row` parameters (plus `fixed` others) fit in one statement.
pub(crate) fn rows_per_statement(per_row: usize, fixed: usize) -> usize {
    ((MAX_PARAMS - fixed) / per_row).max(1)
}

/// `($f, $f+1, ...), (...)`: `rows` groups of `per_row` placeholders numbered from
/// `first`, for a multi-row `VALUES` or a row-value `IN` list.
pub(crate) fn tuples(first: usize, rows: usize, per_row: usize) -> String {
    let mut out = String::with_capacity(rows * per_row * 6);
    let mut n = first;
    for i in 0..rows {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for j in 0..per_row {
            if j > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&n.to_string());
            n += 1;
        }
        out.push(')');
    }
    out
}

/// `$f, $f+1, ..., $f+count-1`: an `IN` list.
pub(crate) fn list(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders() {
        assert_eq!(super::tuples(3, 2, 2), "($3, $4), ($5, $6)");
        assert_eq!(super::list(1, 3), "$1, $2, $3");
        assert_eq!(super::rows_per_statement(17, 0), 58);
    }
}
