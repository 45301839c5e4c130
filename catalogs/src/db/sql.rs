//! The backend-neutral connection the catalog modules write their SQL against: one shape for
//! SQLite ([`rusqlite`]) and PostgreSQL ([`super::postgres`]).
//!
//! The modules write one SQL text for both databases, in the dialect the two share: `?N`
//! placeholders (rewritten to `$N` for PostgreSQL), `INSERT ... RETURNING id`, `ON CONFLICT`,
//! `CASE` instead of SQLite's two-argument `max`, `CAST(sum(...) AS BIGINT)`. Values keep
//! SQLite's model (NULL, INTEGER, REAL, TEXT, BLOB): every type that is stored implements
//! rusqlite's `ToSql`/`FromSql` once, and the PostgreSQL schema declares its columns in the
//! matching classes (`BIGINT`, `TEXT`, `BYTEA`), so the PostgreSQL side converts at this one
//! boundary ([`super::postgres::Value`]).
//!
//! The API mirrors the part of rusqlite's the modules use (`execute`, `query_row`,
//! `prepare_cached` + `query_map`, `.optional()`); row closures still return
//! `rusqlite::Result`. A query with no row fails with `rusqlite::Error::QueryReturnedNoRows`
//! on both backends, which [`OptionalExtension::optional`] turns into `None`.

use super::error::{CatalogError, Result};
use super::postgres::PgClient;
use rusqlite::types::FromSql;
use rusqlite::ToSql;

/// Which database a [`Connection`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One open connection (inside or outside a transaction, as the caller arranged).
pub enum Connection<'a> {
    Sqlite(&'a rusqlite::Connection),
    Postgres(&'a PgClient),
}

/// One result row.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a tokio_postgres::Row),
}

/// Parameters of one statement: `params![...]`, `[a]`, `[a, b]` or `[]`.
pub trait Params {
    fn refs(&self) -> Vec<&dyn ToSql>;
}

impl Params for &[&dyn ToSql] {
    fn refs(&self) -> Vec<&dyn ToSql> {
        self.to_vec()
    }
}

impl Params for [&(dyn ToSql + Send + Sync); 0] {
    fn refs(&self) -> Vec<&dyn ToSql> {
        Vec::new()
    }
}

macro_rules! array_params {
    ($($n:literal)+) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn refs(&self) -> Vec<&dyn ToSql> {
                self.iter().map(|t| t as &dyn ToSql).collect()
            }
        }
    )+};
}
array_params!(1 2 3 4 5 6 7 8);

/// A statement to run with [`Statement::query_map`] (rusqlite's statement cache on SQLite).
pub struct Statement<'c, 'a> {
    conn: &'c Connection<'a>,
    sql: String,
}

impl<'a> Connection<'a> {
    pub fn backend(&self) -> Backend {
        match self {
            Connection::Sqlite(_) => Backend::Sqlite,
            Connection::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs one statement; returns the number of rows it changed.
    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        match self {
            Connection::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params.refs()))?),
            Connection::Postgres(c) => c.execute(sql, &params.refs()),
        }
    }

    /// Runs several statements without parameters (migrations).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self {
            Connection::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Connection::Postgres(c) => c.batch_execute(sql),
        }
    }

    /// The first row of a query, through `f`; `QueryReturnedNoRows` if there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        match self {
            Connection::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.query_row(rusqlite::params_from_iter(params.refs()), |r| f(&Row::Sqlite(r)))?)
            }
            Connection::Postgres(c) => {
                let rows = c.query(sql, &params.refs())?;
                let row = rows.first().ok_or(rusqlite::Error::QueryReturnedNoRows)?;
                Ok(f(&Row::Postgres(row))?)
            }
        }
    }

    /// A statement for [`Statement::query_map`].
    pub fn prepare_cached<'c>(&'c self, sql: &str) -> Result<Statement<'c, 'a>> {
        Ok(Statement { conn: self, sql: sql.to_string() })
    }
}

impl Statement<'_, '_> {
    /// Every row of the query through `f`, in order (read eagerly).
    pub fn query_map<T>(
        &mut self,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<std::vec::IntoIter<rusqlite::Result<T>>> {
        let rows: Vec<rusqlite::Result<T>> = match self.conn {
            Connection::Sqlite(c) => {
                let mut stmt = c.prepare_cached(&self.sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(params.refs()), |r| f(&Row::Sqlite(r)))?;
                rows.collect()
            }
            Connection::Postgres(c) => {
                let rows = c.query(&self.sql, &params.refs())?;
                rows.iter().map(|r| f(&Row::Postgres(r))).collect()
            }
        };
        Ok(rows.into_iter())
    }
}

/// A column index (rusqlite's `RowIndex` for numbers).
pub trait ColumnIndex: Copy {
    fn index(self) -> usize;
}

impl ColumnIndex for usize {
    fn index(self) -> usize {
        self
    }
}

impl Row<'_> {
    /// Column `idx` as `T`, by `T`'s rusqlite `FromSql` on both backends.
    pub fn get<I: ColumnIndex, T: FromSql>(&self, idx: I) -> rusqlite::Result<T> {
        match self {
            Row::Sqlite(r) => r.get(idx.index()),
            Row::Postgres(r) => super::postgres::column(r, idx.index()),
        }
    }
}

/// `.optional()` on a [`Connection::query_row`] result: no row is `Ok(None)`.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(CatalogError::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
