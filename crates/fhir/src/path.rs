//! The subset of FHIRPath used by R4 search-parameter expressions: paths (with choice types
//! such as `Observation.value`), `|`, `ofType()`, `where()`, `resolve() is T`, `exists()`,
//! `as`/`is`, `=`/`!=`, `and`/`or` and literals. Every expression in the R4 definitions parses
//! (a unit test checks), so an unknown construct is a definitions change, caught at build.

use serde_json::Value;

use crate::id::Reference;
use crate::json::Fields;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The focus (`$this`); the start of every path.
    This,
    Child(Box<Expr>, String),
    Call(Box<Expr>, Func),
    Union(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Eq(Box<Expr>, Box<Expr>, bool),
    Is(Box<Expr>, String),
    As(Box<Expr>, String),
    Str(String),
    Bool(bool),
    /// `%resource`: the resource being indexed, whatever the focus.
    Resource,
}

/// A function invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Func {
    OfType(String),
    Where(Box<Expr>),
    Exists,
    Resolve,
    First,
    Not,
    /// `[n]`, the indexer.
    Index(usize),
}

/// A parse failure, with the byte offset where it happened.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("FHIRPath parse error at {at}: {msg}")]
pub struct ParseError {
    pub at: usize,
    pub msg: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Dot,
    LParen,
    RParen,
    Pipe,
    Eq,
    Ne,
    Comma,
    LBracket,
    RBracket,
    Num(usize),
}

fn lex(s: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let tok = match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'.' => Tok::Dot,
            b'(' => Tok::LParen,
            b')' => Tok::RParen,
            b'|' => Tok::Pipe,
            b',' => Tok::Comma,
            b'[' => Tok::LBracket,
            b']' => Tok::RBracket,
            c if c.is_ascii_digit() => {
                let mut j = i;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                let n = s[i..j].parse().map_err(|_| ParseError {
                    at: i,
                    msg: "bad number".into(),
                })?;
                i = j - 1;
                Tok::Num(n)
            }
            b'=' => Tok::Eq,
            b'!' if b.get(i + 1) == Some(&b'=') => {
                i += 1;
                Tok::Ne
            }
            b'\'' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                if j >= b.len() {
                    return Err(ParseError {
                        at: i,
                        msg: "unterminated string".into(),
                    });
                }
                let lit = s[i + 1..j].to_string();
                i = j;
                Tok::Str(lit)
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c == b'%' => {
                let mut j = i;
                while j < b.len()
                    && (b[j].is_ascii_alphanumeric() || matches!(b[j], b'_' | b'$' | b'%'))
                {
                    j += 1;
                }
                let id = s[i..j].to_string();
                i = j - 1;
                Tok::Ident(id)
            }
            _ => {
                return Err(ParseError {
                    at: i,
                    msg: format!("unexpected '{}'", c as char),
                });
            }
        };
        out.push((start, tok));
        i += 1;
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    len: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.1)
    }
    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.len, |t| t.0)
    }
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            at: self.at(),
            msg: msg.into(),
        })
    }
    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(s)) if s == k) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn ident(&mut self) -> Result<String, ParseError> {
        match self.peek().cloned() {
            Some(Tok::Ident(s)) => {
                self.pos += 1;
                Ok(s)
            }
            _ => self.err("expected an identifier"),
        }
    }
    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.and()?;
        while self.keyword("or") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }
    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.eq()?;
        while self.keyword("and") {
            e = Expr::And(Box::new(e), Box::new(self.eq()?));
        }
        Ok(e)
    }
    fn eq(&mut self) -> Result<Expr, ParseError> {
        let e = self.union()?;
        if self.eat(&Tok::Eq) {
            return Ok(Expr::Eq(Box::new(e), Box::new(self.union()?), false));
        }
        if self.eat(&Tok::Ne) {
            return Ok(Expr::Eq(Box::new(e), Box::new(self.union()?), true));
        }
        Ok(e)
    }
    fn union(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.is_as()?;
        while self.eat(&Tok::Pipe) {
            e = Expr::Union(Box::new(e), Box::new(self.is_as()?));
        }
        Ok(e)
    }
    fn is_as(&mut self) -> Result<Expr, ParseError> {
        let e = self.postfix()?;
        if self.keyword("is") {
            return Ok(Expr::Is(Box::new(e), self.type_name()?));
        }
        if self.keyword("as") {
            return Ok(Expr::As(Box::new(e), self.type_name()?));
        }
        Ok(e)
    }
    fn type_name(&mut self) -> Result<String, ParseError> {
        let mut t = self.ident()?;
        // `FHIR.string` style qualified names: keep the last part.
        while self.eat(&Tok::Dot) {
            t = self.ident()?;
        }
        Ok(t)
    }
    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.primary()?;
        loop {
            if self.eat(&Tok::Dot) {
                let name = self.ident()?;
                e = self.member(e, name)?;
            } else if self.eat(&Tok::LBracket) {
                let Some(Tok::Num(n)) = self.peek().cloned() else {
                    return self.err("expected an index");
                };
                self.pos += 1;
                if !self.eat(&Tok::RBracket) {
                    return self.err("expected ']'");
                }
                e = Expr::Call(Box::new(e), Func::Index(n));
            } else {
                return Ok(e);
            }
        }
    }
    fn member(&mut self, on: Expr, name: String) -> Result<Expr, ParseError> {
        if !self.eat(&Tok::LParen) {
            return Ok(Expr::Child(Box::new(on), name));
        }
        let f = match name.as_str() {
            "ofType" | "as" => {
                let t = self.type_name()?;
                Func::OfType(t)
            }
            "is" => {
                let t = self.type_name()?;
                self.expect_rparen()?;
                return Ok(Expr::Is(Box::new(on), t));
            }
            "where" => Func::Where(Box::new(self.or()?)),
            "exists" => Func::Exists,
            "resolve" => Func::Resolve,
            "first" => Func::First,
            "not" => Func::Not,
            other => return self.err(format!("unsupported function {other}()")),
        };
        self.expect_rparen()?;
        Ok(Expr::Call(Box::new(on), f))
    }
    fn expect_rparen(&mut self) -> Result<(), ParseError> {
        if self.eat(&Tok::RParen) {
            Ok(())
        } else {
            self.err("expected ')'")
        }
    }
    fn primary(&mut self) -> Result<Expr, ParseError> {
        match self.peek().cloned() {
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.or()?;
                self.expect_rparen()?;
                Ok(e)
            }
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(Expr::Str(s))
            }
            Some(Tok::Ident(s)) if s == "true" || s == "false" => {
                self.pos += 1;
                Ok(Expr::Bool(s == "true"))
            }
            Some(Tok::Ident(s)) => {
                self.pos += 1;
                if s == "$this" {
                    return Ok(Expr::This);
                }
                if s == "%resource" {
                    return Ok(Expr::Resource);
                }
                self.member(Expr::This, s)
            }
            _ => self.err("expected an expression"),
        }
    }
}

/// Parses an expression.
pub fn parse(s: &str) -> Result<Expr, ParseError> {
    let toks = lex(s)?;
    let mut p = Parser {
        toks,
        pos: 0,
        len: s.len(),
    };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return p.err("unexpected trailing input");
    }
    Ok(e)
}

/// The branches of `e` that apply to resources of `rtype`: union members rooted at another
/// resource type are dropped (`None` when nothing is left).
pub fn specialize(e: &Expr, rtype: &str) -> Option<Expr> {
    match e {
        Expr::Union(a, b) => match (specialize(a, rtype), specialize(b, rtype)) {
            (Some(a), Some(b)) => Some(Expr::Union(Box::new(a), Box::new(b))),
            (a, b) => a.or(b),
        },
        other => match root_type(other) {
            Some(t) if t != rtype && t != "Resource" && t != "DomainResource" => None,
            _ => Some(other.clone()),
        },
    }
}

/// The type name a path starts from (`Observation` in `Observation.code.where(…)`).
fn root_type(e: &Expr) -> Option<&str> {
    match e {
        Expr::Child(on, name) if **on == Expr::This => name
            .starts_with(|c: char| c.is_ascii_uppercase())
            .then_some(name.as_str()),
        Expr::Child(on, _) | Expr::Call(on, _) | Expr::As(on, _) | Expr::Is(on, _) => root_type(on),
        _ => None,
    }
}

/// Recognises `X.where(resolve() is T)`, returning `X` and `T`.
pub fn as_resolve_filter(e: &Expr) -> Option<(&Expr, &str)> {
    if let Expr::Call(inner, Func::Where(cond)) = e {
        if let Expr::Is(r, t) = cond.as_ref() {
            if matches!(r.as_ref(), Expr::Call(this, Func::Resolve) if **this == Expr::This) {
                return Some((inner, t));
            }
        }
    }
    None
}

/// A value produced by evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// A JSON node; `choice` is the type suffix when it was reached through a choice element
    /// (`valueQuantity` reached as `value` has choice `Quantity`).
    Node {
        v: &'a Value,
        choice: Option<&'a str>,
    },
    Bool(bool),
    Str(String),
    /// The type a reference resolves to (the result of `resolve()`; we only need its type).
    Resolved(String),
}

impl<'a> Item<'a> {
    pub fn node(v: &'a Value) -> Item<'a> {
        Item::Node { v, choice: None }
    }
}

fn push_flat<'a>(out: &mut Vec<Item<'a>>, v: &'a Value, choice: Option<&'a str>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| out.push(Item::Node { v: x, choice })),
        Value::Null => {}
        _ => out.push(Item::Node { v, choice }),
    }
}

fn truthy(items: &[Item]) -> Option<bool> {
    match items {
        [] => None,
        [Item::Bool(b)] => Some(*b),
        _ => Some(true),
    }
}

/// Evaluates `e` with `focus` as the input collection and as `%resource`.
pub fn eval<'a>(e: &Expr, focus: &[Item<'a>]) -> Vec<Item<'a>> {
    eval_in(e, focus, focus)
}

/// Evaluates `e` with `focus` as the input collection, `resource` as `%resource`.
pub fn eval_in<'a>(e: &Expr, focus: &[Item<'a>], resource: &[Item<'a>]) -> Vec<Item<'a>> {
    let eval = |e: &Expr, f: &[Item<'a>]| eval_in(e, f, resource);
    match e {
        Expr::This => focus.to_vec(),
        Expr::Resource => resource.to_vec(),
        Expr::Str(s) => vec![Item::Str(s.clone())],
        Expr::Bool(b) => vec![Item::Bool(*b)],
        Expr::Child(on, name) => {
            let mut out = Vec::new();
            for it in input(on, focus, resource).iter() {
                let Item::Node {
                    v: Value::Object(o),
                    ..
                } = it
                else {
                    continue;
                };
                // Element names start in lower case, type names in upper case: only a type
                // name can select the resource itself.
                let type_step = name.starts_with(|c: char| c.is_ascii_uppercase());
                let rt = if type_step {
                    o.field("resourceType").and_then(Value::as_str)
                } else {
                    None
                };
                let is_base = matches!(name.as_str(), "Resource" | "DomainResource");
                if rt == Some(name.as_str()) || (is_base && rt.is_some()) {
                    out.push(it.clone());
                } else if let Some(x) = crate::json::get(o, name) {
                    push_flat(&mut out, x, None);
                } else if name.starts_with(|c: char| c.is_ascii_lowercase()) {
                    for (k, x) in o {
                        if k.len() > name.len()
                            && k.starts_with(name.as_str())
                            && k.as_bytes()[name.len()].is_ascii_uppercase()
                        {
                            push_flat(&mut out, x, Some(&k[name.len()..]));
                        }
                    }
                }
            }
            out
        }
        Expr::Call(on, f) => {
            let input = input(on, focus, resource).into_owned();
            match f {
                Func::OfType(t) => input.into_iter().filter(|i| is_type(i, t)).collect(),
                Func::Where(cond) => input
                    .into_iter()
                    .filter(|i| truthy(&eval(cond, std::slice::from_ref(i))).unwrap_or(false))
                    .collect(),
                Func::Exists => vec![Item::Bool(!input.is_empty())],
                Func::First => input.into_iter().take(1).collect(),
                Func::Index(n) => input.into_iter().skip(*n).take(1).collect(),
                Func::Not => match truthy(&input) {
                    Some(b) => vec![Item::Bool(!b)],
                    None => vec![],
                },
                Func::Resolve => input
                    .iter()
                    .filter_map(resolve_type)
                    .map(Item::Resolved)
                    .collect(),
            }
        }
        Expr::Union(a, b) => {
            let mut out = eval(a, focus);
            for x in eval(b, focus) {
                if !out.contains(&x) {
                    out.push(x);
                }
            }
            out
        }
        Expr::And(a, b) => match (truthy(&eval(a, focus)), truthy(&eval(b, focus))) {
            (Some(false), _) | (_, Some(false)) => vec![Item::Bool(false)],
            (Some(true), Some(true)) => vec![Item::Bool(true)],
            _ => vec![],
        },
        Expr::Or(a, b) => match (truthy(&eval(a, focus)), truthy(&eval(b, focus))) {
            (Some(true), _) | (_, Some(true)) => vec![Item::Bool(true)],
            (Some(false), Some(false)) => vec![Item::Bool(false)],
            _ => vec![],
        },
        Expr::Eq(a, b, negate) => {
            let (l, r) = (eval(a, focus), eval(b, focus));
            if l.is_empty() || r.is_empty() {
                return vec![];
            }
            let equal = l.len() == r.len() && l.iter().zip(&r).all(|(x, y)| same(x, y));
            vec![Item::Bool(equal != *negate)]
        }
        Expr::Is(on, t) => {
            let input = eval(on, focus);
            match input.as_slice() {
                [] => vec![],
                [one] => vec![Item::Bool(is_type(one, t))],
                _ => vec![Item::Bool(false)],
            }
        }
        Expr::As(on, t) => eval(on, focus)
            .into_iter()
            .filter(|i| is_type(i, t))
            .collect(),
    }
}

/// What `on` evaluates to over `focus`: `focus` itself, borrowed, when `on` is `$this` — the
/// start of every path, so most steps save a copy of their input.
fn input<'a, 'f>(
    on: &Expr,
    focus: &'f [Item<'a>],
    resource: &[Item<'a>],
) -> std::borrow::Cow<'f, [Item<'a>]> {
    match on {
        Expr::This => std::borrow::Cow::Borrowed(focus),
        // `Observation.code` over Observations: the type step selects the whole focus.
        Expr::Child(inner, t)
            if **inner == Expr::This
                && t.starts_with(|c: char| c.is_ascii_uppercase())
                && focus.iter().all(|i| is_resource_of(i, t)) =>
        {
            std::borrow::Cow::Borrowed(focus)
        }
        _ => std::borrow::Cow::Owned(eval_in(on, focus, resource)),
    }
}

/// Whether `i` is a resource that the type step `t` selects as a whole.
fn is_resource_of(i: &Item, t: &str) -> bool {
    let Item::Node {
        v: Value::Object(o),
        ..
    } = i
    else {
        return false;
    };
    match o.field("resourceType").and_then(Value::as_str) {
        Some(rt) => rt == t || matches!(t, "Resource" | "DomainResource"),
        None => false,
    }
}

fn same(a: &Item, b: &Item) -> bool {
    fn prim(i: &Item) -> Option<Value> {
        match i {
            Item::Node { v, .. } => Some((*v).clone()),
            Item::Bool(b) => Some(Value::Bool(*b)),
            Item::Str(s) | Item::Resolved(s) => Some(Value::String(s.clone())),
        }
    }
    prim(a) == prim(b)
}

fn resolve_type(i: &Item) -> Option<String> {
    let Item::Node { v, .. } = i else { return None };
    if let Some(t) = v.field("type").and_then(Value::as_str) {
        return Some(t.to_string());
    }
    let r = v
        .field("reference")
        .and_then(Value::as_str)
        .or(v.as_str())?;
    Reference::parse(r).map(|r| r.rtype)
}

fn is_type(i: &Item, t: &str) -> bool {
    match i {
        Item::Resolved(x) => x == t,
        Item::Bool(_) => t.eq_ignore_ascii_case("boolean"),
        Item::Str(_) => t.eq_ignore_ascii_case("string"),
        Item::Node { v, choice } => {
            if let Some(c) = choice {
                return c.eq_ignore_ascii_case(t);
            }
            if let Some(rt) = v.field("resourceType").and_then(Value::as_str) {
                return rt == t;
            }
            // Not reached through a choice element: the element's declared type is the only
            // one it can have, and the definitions only apply ofType() where it matches.
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defs::Definitions;
    use proptest::prelude::*;
    use serde_json::json;

    fn strings(expr: &str, r: &Value) -> Vec<String> {
        let e = parse(expr).unwrap();
        eval(&e, &[Item::node(r)])
            .into_iter()
            .map(|i| match i {
                Item::Node { v, .. } => v.to_string(),
                Item::Bool(b) => b.to_string(),
                Item::Str(s) | Item::Resolved(s) => s,
            })
            .collect()
    }

    #[test]
    fn every_r4_expression_parses() {
        // Definitions::get() parses all expressions and panics on a failure.
        let d = Definitions::get();
        let n: usize = d
            .resource_types()
            .iter()
            .map(|t| d.params(t).unwrap().len())
            .sum();
        assert!(n > 1500);
    }

    #[test]
    fn evaluates_search_expressions() {
        let obs = json!({"resourceType": "Observation",
            "subject": {"reference": "Patient/1"},
            "valueQuantity": {"value": 5.4, "unit": "mmol/L"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]}});
        assert_eq!(strings("Observation.code", &obs).len(), 1);
        assert_eq!(strings("Observation.value.ofType(Quantity)", &obs).len(), 1);
        assert!(strings("Observation.value.ofType(CodeableConcept)", &obs).is_empty());
        assert_eq!(
            strings("Observation.subject.where(resolve() is Patient)", &obs).len(),
            1
        );
        assert!(strings("Observation.subject.where(resolve() is Group)", &obs).is_empty());
        assert!(strings("Encounter.subject | Encounter.patient", &obs).is_empty());
        let p = json!({"resourceType": "Patient", "deceasedBoolean": false,
            "telecom": [{"system": "phone", "value": "138"}, {"system": "email", "value": "a@b"}]});
        assert_eq!(
            strings(
                "Patient.deceased.exists() and Patient.deceased != false",
                &p
            ),
            ["false"]
        );
        assert_eq!(
            strings("Patient.telecom.where(system='phone')", &p).len(),
            1
        );
        let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
        assert_eq!(
            strings(
                "Patient.deceased.exists() and Patient.deceased != false",
                &dead
            ),
            ["true"]
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "[A-Za-z().|'=! ]{0,40}") {
            let _ = parse(&s);
        }
    }
}
