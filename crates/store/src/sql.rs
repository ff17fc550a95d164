//! The thin SQL layer both backends share: values, a connection trait, and the two
//! implementations. Statements are written once with `?` placeholders; the PostgreSQL side
//! numbers them. Bulk row inserts are the one place the backends differ in shape: SQLite
//! re-executes a cached prepared statement (cheap in-process), PostgreSQL sends one `UNNEST`
//! of column arrays (one round trip for any number of rows).

use std::collections::HashMap;

use crate::StoreError;

/// A SQL value. Integers are 64-bit on both backends (PostgreSQL columns are BIGINT).
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Null,
    /// A `bigint[]` parameter, PostgreSQL only: one statement shape for a list of any length
    /// (`= ANY(?)`, `unnest(?)`), where an `IN (…)` list would be a new statement per length.
    Ints(Vec<i64>),
}

impl Val {
    pub fn int(&self) -> i64 {
        match self {
            Val::Int(i) => *i,
            Val::Real(f) => *f as i64,
            _ => 0,
        }
    }
    pub fn text(&self) -> &str {
        match self {
            Val::Text(s) => s,
            _ => "",
        }
    }
    /// The bytes of a blob (or text), without copying them.
    pub fn blob(&self) -> &[u8] {
        match self {
            Val::Blob(b) => b,
            Val::Text(s) => s.as_bytes(),
            _ => &[],
        }
    }
    pub fn into_blob(self) -> Vec<u8> {
        match self {
            Val::Blob(b) => b,
            Val::Text(s) => s.into_bytes(),
            _ => Vec::new(),
        }
    }
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}
impl From<f64> for Val {
    fn from(v: f64) -> Val {
        Val::Real(v)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_string())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}
impl From<Vec<u8>> for Val {
    fn from(v: Vec<u8>) -> Val {
        Val::Blob(v)
    }
}

pub type Row = Vec<Val>;

/// One result row's cells, borrowed from the driver: read in place by the paths that go
/// through many rows (a page of bodies, a person's keys) instead of copied into a [`Row`].
/// A cell of another type reads as 0 or empty, as [`Val`]'s accessors do.
pub trait Cells {
    fn int(&self, i: usize) -> i64;
    fn text(&self, i: usize) -> &str;
    fn blob(&self, i: usize) -> &[u8];
    /// The cell as an owned value, whatever its type.
    fn val(&self, i: usize) -> Val;
}

impl Cells for Row {
    fn int(&self, i: usize) -> i64 {
        self.get(i).map_or(0, Val::int)
    }
    fn text(&self, i: usize) -> &str {
        self.get(i).map_or("", Val::text)
    }
    fn blob(&self, i: usize) -> &[u8] {
        self.get(i).map_or(&[], Val::blob)
    }
    fn val(&self, i: usize) -> Val {
        self.get(i).cloned().unwrap_or(Val::Null)
    }
}

/// What [`Conn::query_each`] calls for each row.
pub type EachRow<'f> = dyn FnMut(&dyn Cells) -> Result<(), StoreError> + 'f;

/// Which SQL dialect a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A database connection as the store uses it.
pub trait Conn: Send {
    fn dialect(&self) -> Dialect;
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError>;
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError>;
    /// Runs `INSERT … RETURNING rid` (possibly `OR IGNORE` / `ON CONFLICT DO NOTHING`) into a
    /// table whose integer key is `rid`: the new row's, `None` when nothing was inserted.
    fn insert_rid(&mut self, sql: &str, params: &[Val]) -> Result<Option<i64>, StoreError> {
        Ok(self.query(sql, params)?.first().map(|r| r[0].int()))
    }
    /// Runs a query and hands each row to `f` in turn, stopping at the first error.
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Val],
        f: &mut EachRow<'_>,
    ) -> Result<(), StoreError> {
        self.query(sql, params)?.iter().try_for_each(|r| f(r))
    }
    /// Inserts many rows into `table` (columns in order). Every row has the same shape, and
    /// no value is NULL.
    fn insert_rows(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[Row],
    ) -> Result<(), StoreError>;
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
}

// ---------------------------------------------------------------------------------------------
// SQLite

pub struct SqliteConn(pub rusqlite::Connection);

/// Binds a value by reference: text and blobs (bodies, index values) are handed to SQLite
/// as they are, not copied into an owned value first.
impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Val::Int(i) => ValueRef::Integer(*i),
            Val::Real(f) => ValueRef::Real(*f),
            Val::Text(s) => ValueRef::Text(s.as_bytes()),
            Val::Blob(b) => ValueRef::Blob(b),
            Val::Null => ValueRef::Null,
            Val::Ints(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "array parameters are PostgreSQL-only".into(),
                ))
            }
        }))
    }
}

impl Cells for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> i64 {
        match self.get_ref(i) {
            Ok(rusqlite::types::ValueRef::Integer(v)) => v,
            Ok(rusqlite::types::ValueRef::Real(f)) => f as i64,
            _ => 0,
        }
    }
    fn text(&self, i: usize) -> &str {
        match self.get_ref(i) {
            Ok(rusqlite::types::ValueRef::Text(t)) => std::str::from_utf8(t).unwrap_or(""),
            _ => "",
        }
    }
    fn blob(&self, i: usize) -> &[u8] {
        match self.get_ref(i) {
            Ok(rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b)) => b,
            _ => &[],
        }
    }
    fn val(&self, i: usize) -> Val {
        self.get_ref(i).map_or(Val::Null, from_sqlite)
    }
}

fn from_sqlite(v: rusqlite::types::ValueRef) -> Val {
    use rusqlite::types::ValueRef as V;
    match v {
        V::Null => Val::Null,
        V::Integer(i) => Val::Int(i),
        V::Real(f) => Val::Real(f),
        V::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
        V::Blob(b) => Val::Blob(b.to_vec()),
    }
}

impl Conn for SqliteConn {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let mut st = self.0.prepare_cached(sql)?;
        let n = st.execute(rusqlite::params_from_iter(params.iter()))?;
        Ok(n as u64)
    }
    /// SQLite gathers a statement's RETURNING rows in a temporary table before handing them
    /// out; here `rid` is the table's INTEGER PRIMARY KEY, its rowid, which the insert alone
    /// tells.
    fn insert_rid(&mut self, sql: &str, params: &[Val]) -> Result<Option<i64>, StoreError> {
        let plain = sql
            .strip_suffix(" RETURNING rid")
            .ok_or_else(|| StoreError::Invalid(format!("not an INSERT … RETURNING rid: {sql}")))?;
        let n = self.exec(plain, params)?;
        Ok((n == 1).then(|| self.0.last_insert_rowid()))
    }
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let mut st = self.0.prepare_cached(sql)?;
        let n = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(from_sqlite(r.get_ref(i)?));
            }
            out.push(row);
        }
        Ok(out)
    }
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Val],
        f: &mut EachRow<'_>,
    ) -> Result<(), StoreError> {
        let mut st = self.0.prepare_cached(sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
        while let Some(r) = rows.next()? {
            f(r)?;
        }
        Ok(())
    }
    fn insert_rows(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[Row],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let sql = insert_sql(table, columns);
        let mut st = self.0.prepare_cached(&sql)?;
        for r in rows {
            st.execute(rusqlite::params_from_iter(r.iter()))?;
        }
        Ok(())
    }
    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.0.execute_batch(sql)?)
    }
}

thread_local! {
    static INSERT_SQL: std::cell::RefCell<HashMap<String, std::rc::Rc<str>>> =
        std::cell::RefCell::new(HashMap::new());
}

/// The SQLite insert statement for an index table, built once per thread (it is requested
/// for every resource written).
fn insert_sql(table: &str, columns: &[&str]) -> std::rc::Rc<str> {
    INSERT_SQL.with(|m| {
        if let Some(s) = m.borrow().get(table) {
            return s.clone();
        }
        let marks = vec!["?"; columns.len()].join(",");
        let sql: std::rc::Rc<str> = format!(
            "INSERT OR IGNORE INTO {table} ({}) VALUES ({marks})",
            columns.join(",")
        )
        .into();
        m.borrow_mut().insert(table.to_string(), sql.clone());
        sql
    })
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

pub struct PgConn {
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // The synchronous client closes its connection by blocking on an internal runtime,
        // which panics when the last Store handle is dropped on an async worker thread (at
        // server shutdown). Closing on a plain thread is always safe.
        self.statements.clear();
        if let Some(client) = self.client.take() {
            std::thread::spawn(move || drop(client));
        }
    }
}

impl PgConn {
    pub fn new(client: postgres::Client) -> PgConn {
        PgConn {
            client: Some(client),
            statements: HashMap::new(),
        }
    }

    fn c(&mut self) -> &mut postgres::Client {
        self.client.as_mut().expect("client present until drop")
    }

    fn prepare(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let st = self.c().prepare(&number_placeholders(sql))?;
        if self.statements.len() > 512 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }
}

/// Rewrites `?` placeholders as `$1, $2, …` (outside string literals).
pub fn number_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    let mut in_str = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                in_str = !in_str;
                out.push(c);
            }
            '?' if !in_str => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

type PgParam = Box<dyn postgres::types::ToSql + Sync + Send>;

fn to_pg(v: &Val) -> PgParam {
    match v {
        Val::Int(i) => Box::new(*i),
        Val::Real(f) => Box::new(*f),
        Val::Text(s) => Box::new(s.clone()),
        Val::Blob(b) => Box::new(b.clone()),
        Val::Null => Box::new(Option::<i64>::None),
        Val::Ints(v) => Box::new(v.clone()),
    }
}

fn from_pg(row: &postgres::Row, i: usize) -> Result<Val, StoreError> {
    use postgres::types::Type;
    let t = row.columns()[i].type_();
    Ok(if *t == Type::INT8 {
        row.try_get::<_, Option<i64>>(i)?
            .map_or(Val::Null, Val::Int)
    } else if *t == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)?
            .map_or(Val::Null, |v| Val::Int(v as i64))
    } else if *t == Type::INT2 {
        row.try_get::<_, Option<i16>>(i)?
            .map_or(Val::Null, |v| Val::Int(v as i64))
    } else if *t == Type::FLOAT8 {
        row.try_get::<_, Option<f64>>(i)?
            .map_or(Val::Null, Val::Real)
    } else if *t == Type::BYTEA {
        row.try_get::<_, Option<Vec<u8>>>(i)?
            .map_or(Val::Null, Val::Blob)
    } else if *t == Type::BOOL {
        row.try_get::<_, Option<bool>>(i)?
            .map_or(Val::Null, |b| Val::Int(b as i64))
    } else {
        row.try_get::<_, Option<String>>(i)?
            .map_or(Val::Null, Val::Text)
    })
}

impl Conn for PgConn {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let st = self.prepare(sql)?;
        let ps: Vec<PgParam> = params.iter().map(to_pg).collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = ps
            .iter()
            .map(|b| b.as_ref() as &(dyn postgres::types::ToSql + Sync))
            .collect();
        Ok(self.c().execute(&st, &refs)?)
    }
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let st = self.prepare(sql)?;
        let ps: Vec<PgParam> = params.iter().map(to_pg).collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = ps
            .iter()
            .map(|b| b.as_ref() as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let rows = self.c().query(&st, &refs)?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| from_pg(r, i))
                    .collect::<Result<Row, _>>()
            })
            .collect()
    }
    fn insert_rows(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[Row],
    ) -> Result<(), StoreError> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        // One array parameter per column; the element type follows the first row.
        let mut arrays: Vec<PgParam> = Vec::with_capacity(columns.len());
        let mut casts = Vec::with_capacity(columns.len());
        for (c, proto) in first.iter().enumerate() {
            match proto {
                Val::Int(_) => {
                    arrays.push(Box::new(
                        rows.iter().map(|r| r[c].int()).collect::<Vec<i64>>(),
                    ));
                    casts.push("bigint[]");
                }
                Val::Real(_) => {
                    let v: Vec<f64> = rows
                        .iter()
                        .map(|r| if let Val::Real(f) = r[c] { f } else { 0.0 })
                        .collect();
                    arrays.push(Box::new(v));
                    casts.push("float8[]");
                }
                Val::Blob(_) => {
                    let v: Vec<Vec<u8>> = rows.iter().map(|r| r[c].clone().into_blob()).collect();
                    arrays.push(Box::new(v));
                    casts.push("bytea[]");
                }
                Val::Text(_) | Val::Null | Val::Ints(_) => {
                    let v: Vec<String> = rows.iter().map(|r| r[c].text().to_string()).collect();
                    arrays.push(Box::new(v));
                    casts.push("text[]");
                }
            }
        }
        let unnest: Vec<String> = casts
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::{t}", i + 1))
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT * FROM UNNEST({}) ON CONFLICT DO NOTHING",
            columns.join(","),
            unnest.join(",")
        );
        let st = match self.statements.get(&sql) {
            Some(s) => s.clone(),
            None => {
                let s = self.c().prepare(&sql)?;
                self.statements.insert(sql, s.clone());
                s
            }
        };
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = arrays
            .iter()
            .map(|b| b.as_ref() as &(dyn postgres::types::ToSql + Sync))
            .collect();
        self.c().execute(&st, &refs)?;
        Ok(())
    }
    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.c().batch_execute(sql)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_placeholders_outside_literals() {
        assert_eq!(
            number_placeholders("SELECT ? WHERE a = '?' AND b IN (?, ?)"),
            "SELECT $1 WHERE a = '?' AND b IN ($2, $3)"
        );
    }
}
