//! A small blocking connection pool: connections are opened lazily up to a maximum and
//! handed back on drop.

use std::sync::{Condvar, Mutex};

use crate::sql::Conn;
use crate::StoreError;

type Factory = Box<dyn Fn() -> Result<Box<dyn Conn>, StoreError> + Send + Sync>;

pub struct Pool {
    idle: Mutex<(Vec<Box<dyn Conn>>, usize)>,
    cv: Condvar,
    max: usize,
    factory: Factory,
}

pub struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<Box<dyn Conn>>,
}

impl Pool {
    pub fn new(max: usize, factory: Factory) -> Pool {
        Pool {
            idle: Mutex::new((Vec::new(), 0)),
            cv: Condvar::new(),
            max,
            factory,
        }
    }

    pub fn get(&self) -> Result<Pooled<'_>, StoreError> {
        let mut g = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(c) = g.0.pop() {
                return Ok(Pooled {
                    pool: self,
                    conn: Some(c),
                });
            }
            if g.1 < self.max {
                g.1 += 1;
                drop(g);
                return match (self.factory)() {
                    Ok(c) => Ok(Pooled {
                        pool: self,
                        conn: Some(c),
                    }),
                    Err(e) => {
                        self.idle.lock().unwrap_or_else(|e| e.into_inner()).1 -= 1;
                        self.cv.notify_one();
                        Err(e)
                    }
                };
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Pooled<'_> {
    pub fn conn(&mut self) -> &mut dyn Conn {
        self.conn
            .as_deref_mut()
            .expect("pooled connection present until drop")
    }

    /// Drops the connection instead of returning it (it is in an unknown state).
    pub fn discard(&mut self) {
        if self.conn.take().is_some() {
            self.pool.idle.lock().unwrap_or_else(|e| e.into_inner()).1 -= 1;
            self.pool.cv.notify_one();
        }
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .push(c);
            self.pool.cv.notify_one();
        }
    }
}
