//! The PostgreSQL side of [`super::sql`]: one `tokio-postgres` connection used synchronously,
//! the `?N` → `$N` placeholder rewrite, and the conversion between SQLite's value model and
//! PostgreSQL's column types.
//!
//! # Why tokio-postgres, driven this way
//!
//! The catalog's API is synchronous (its callers are async handlers and `spawn_blocking`
//! closures alike). The `postgres` crate (the sync wrapper) blocks on a private tokio runtime,
//! which panics when called from inside the server's runtime; sqlx is async-only and would
//! pull its own query layer beside rusqlite. So the connection's I/O future runs on a
//! dedicated thread with a current-thread runtime, and each call waits for its reply with a
//! plain thread-parking executor ([`block_on`]): the client side of tokio-postgres is only
//! channels, so waiting for it needs no runtime, from any thread.
//!
//! TLS is not used (`NoTls`): connect over a Unix socket or a trusted network; a
//! `sslmode=require` URL fails to connect rather than silently falling back.

use super::error::{CatalogError, Result};
use bytes::BytesMut;
use rusqlite::types::{FromSql, ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::ToSql;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use tokio_postgres::types::{IsNull, Type};

/// A connected client; the connection's I/O runs on its own thread until the client is dropped.
pub struct PgClient {
    client: tokio_postgres::Client,
}

impl PgClient {
    /// Connects to `url` (`postgres://user@host/db`, `postgres:///db?host=/run/postgresql`...).
    pub fn connect(url: &str) -> Result<PgClient> {
        let config: tokio_postgres::Config = url.parse()?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("kura-postgres".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(CatalogError::Invalid(format!("cannot start a runtime: {e}"))));
                        return;
                    }
                };
                rt.block_on(async move {
                    match config.connect(tokio_postgres::NoTls).await {
                        Ok((client, connection)) => {
                            let _ = tx.send(Ok(client));
                            if let Err(e) = connection.await {
                                tracing::warn!(error = %e, "catalog PostgreSQL connection ended");
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(CatalogError::Postgres(e)));
                        }
                    }
                });
            })
            .map_err(|e| CatalogError::Invalid(format!("cannot start the PostgreSQL thread: {e}")))?;
        let client = rx.recv().map_err(|_| CatalogError::Invalid("the PostgreSQL thread ended".into()))??;
        Ok(PgClient { client })
    }

    /// Whether the connection is gone (the server restarted, the network failed).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub fn execute(&self, sql: &str, params: &[&dyn ToSql]) -> Result<usize> {
        let values = values(params)?;
        let n = block_on(self.client.execute(placeholders(sql).as_str(), &refs(&values)))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub fn query(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<tokio_postgres::Row>> {
        let values = values(params)?;
        Ok(block_on(self.client.query(placeholders(sql).as_str(), &refs(&values)))?)
    }

    pub fn batch_execute(&self, sql: &str) -> Result<()> {
        Ok(block_on(self.client.batch_execute(sql))?)
    }
}

/// One writing transaction: `BEGIN` (READ COMMITTED) and the catalog's write lock
/// ([`super::PG_WRITE_LOCK`]); rolled back when dropped without [`TxGuard::commit`] (an error or
/// a panic in the caller).
///
/// READ COMMITTED, not REPEATABLE READ: each statement sees what was committed before it
/// started, and every statement of the transaction starts after the lock was granted, so a
/// transaction sees every earlier writer's commit — as a `BEGIN IMMEDIATE` on SQLite does.
pub struct TxGuard<'a> {
    client: &'a PgClient,
    open: bool,
}

impl<'a> TxGuard<'a> {
    pub fn begin(client: &'a PgClient) -> Result<TxGuard<'a>> {
        client.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({})",
            super::PG_WRITE_LOCK
        ))?;
        Ok(TxGuard { client, open: true })
    }

    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        self.client.batch_execute("COMMIT")
    }
}

impl Drop for TxGuard<'_> {
    fn drop(&mut self) {
        if self.open {
            if let Err(e) = self.client.batch_execute("ROLLBACK") {
                tracing::warn!(error = %e, "rolling back a catalog transaction failed");
            }
        }
    }
}

/// Refuses a database whose text does not sort byte-wise (the catalog lists hosts, MACs and
/// disks by name, and SQLite compares text by bytes): its collation must be `C` or `POSIX`.
pub fn check_database(client: &PgClient) -> Result<()> {
    let rows = client.query("SELECT datcollate::text FROM pg_database WHERE datname = current_database()", &[])?;
    let collate: String = rows.first().map(|r| column(r, 0)).transpose()?.unwrap_or_default();
    if collate != "C" && collate != "POSIX" {
        return Err(CatalogError::Invalid(format!(
            "the catalog's PostgreSQL database has collation {collate:?}; Kura needs \"C\" (create it with \
             CREATE DATABASE kura TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C')"
        )));
    }
    Ok(())
}

/// Runs `fut` to completion on this thread, parking between polls.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// `?N` (and bare `?`) placeholders rewritten to PostgreSQL's `$N`, outside quoted text.
pub fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let (mut quote, mut next_bare) = (None, 1);
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') => {
                out.push('$');
                if chars.peek().is_some_and(char::is_ascii_digit) {
                    continue;
                }
                out.push_str(&next_bare.to_string());
                next_bare += 1;
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// One parameter or column value in SQLite's model, converted to and from the PostgreSQL type
/// the statement or column has.
#[derive(Debug)]
pub struct Value(SqlValue);

fn values(params: &[&dyn ToSql]) -> Result<Vec<Value>> {
    params
        .iter()
        .map(|p| {
            Ok(Value(match p.to_sql()? {
                ToSqlOutput::Borrowed(v) => v.into(),
                ToSqlOutput::Owned(v) => v,
                other => {
                    return Err(CatalogError::Invalid(format!("a parameter PostgreSQL cannot take: {other:?}")));
                }
            }))
        })
        .collect()
}

fn refs(values: &[Value]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)).collect()
}

type BoxError = Box<dyn StdError + Sync + Send>;

impl tokio_postgres::types::ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        use tokio_postgres::types::ToSql as P;
        match (&self.0, ty) {
            (SqlValue::Null, _) => Ok(IsNull::Yes),
            (SqlValue::Integer(i), &Type::INT8) => P::to_sql(i, ty, out),
            (SqlValue::Integer(i), &Type::INT4) => P::to_sql(&i32::try_from(*i)?, ty, out),
            (SqlValue::Integer(i), &Type::INT2) => P::to_sql(&i16::try_from(*i)?, ty, out),
            (SqlValue::Integer(i), &Type::BOOL) => P::to_sql(&(*i != 0), ty, out),
            (SqlValue::Integer(i), &Type::FLOAT8) => P::to_sql(&(*i as f64), ty, out),
            (SqlValue::Real(f), &Type::FLOAT8) => P::to_sql(f, ty, out),
            (SqlValue::Text(s), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME | &Type::UNKNOWN) => {
                P::to_sql(&s.as_str(), ty, out)
            }
            (SqlValue::Blob(b), &Type::BYTEA) => P::to_sql(&b.as_slice(), ty, out),
            (v, ty) => Err(format!("cannot send {v:?} as PostgreSQL type {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

impl<'a> tokio_postgres::types::FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<Self, BoxError> {
        use tokio_postgres::types::FromSql as F;
        Ok(Value(match *ty {
            Type::INT8 => SqlValue::Integer(<i64 as F>::from_sql(ty, raw)?),
            Type::INT4 => SqlValue::Integer(<i32 as F>::from_sql(ty, raw)?.into()),
            Type::INT2 => SqlValue::Integer(<i16 as F>::from_sql(ty, raw)?.into()),
            Type::BOOL => SqlValue::Integer(<bool as F>::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => SqlValue::Real(<f64 as F>::from_sql(ty, raw)?),
            Type::FLOAT4 => SqlValue::Real(<f32 as F>::from_sql(ty, raw)?.into()),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => SqlValue::Text(<String as F>::from_sql(ty, raw)?),
            Type::BYTEA => SqlValue::Blob(raw.to_vec()),
            _ => {
                return Err(format!(
                    "PostgreSQL type {ty} has no catalog value (declare BIGINT, TEXT or BYTEA, or CAST)"
                )
                .into())
            }
        }))
    }

    fn from_sql_null(_: &Type) -> std::result::Result<Self, BoxError> {
        Ok(Value(SqlValue::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Column `idx` of `row` as `T`, through `T`'s rusqlite `FromSql`.
pub fn column<T: FromSql>(row: &tokio_postgres::Row, idx: usize) -> rusqlite::Result<T> {
    let ty = row.columns().get(idx).map(|c| c.type_().clone());
    let Some(ty) = ty else {
        return Err(rusqlite::Error::InvalidColumnIndex(idx));
    };
    let Value(v) = row
        .try_get::<_, Value>(idx)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Null, Box::new(e)))?;
    T::column_result(ValueRef::from(&v)).map_err(|e| match e {
        rusqlite::types::FromSqlError::InvalidType => {
            rusqlite::Error::InvalidColumnType(idx, ty.to_string(), v.data_type())
        }
        rusqlite::types::FromSqlError::OutOfRange(i) => rusqlite::Error::IntegralValueOutOfRange(idx, i),
        other => rusqlite::Error::FromSqlConversionFailure(idx, v.data_type(), Box::new(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::placeholders;

    #[test]
    fn placeholders_are_rewritten_outside_quotes_only() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE a = ?1 AND b = ?12"),
            "SELECT a FROM t WHERE a = $1 AND b = $12"
        );
        assert_eq!(placeholders("UPDATE t SET a = ? WHERE b = ?"), "UPDATE t SET a = $1 WHERE b = $2");
        assert_eq!(placeholders("SELECT '?1', \"a?\" FROM t WHERE x = ?2"), "SELECT '?1', \"a?\" FROM t WHERE x = $2");
    }
}
