//! The `when:` grammar of a route, compiled while the YAML is read:
//!
//! ```yaml
//! when: {task: reasoning, budget: {lt: 0.01}, header.x-team: [red, blue], metadata.tier: {eq: 2}}
//! ```
//!
//! A key names what to look at (`task`, `model`, `context_length`, `budget`,
//! `header.NAME`, `metadata.KEY`); its value is a scalar (equals), a list (one of) or a
//! map of comparisons (`lt`, `le`, `gt`, `ge`, `eq`, `in`). Errors carry the field's path
//! (`routes[0].when.budget.lt: ...`) because they are raised while serde_yaml is inside
//! that field. Evaluation is `rules::matches`.

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// A compiled `when`: every check must hold (none: the route always applies).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct When {
    pub checks: Vec<Check>,
}

/// One key of a `when` map: what to look at, and the conditions its value must meet.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub subject: Subject,
    pub conds: Vec<Cond>,
}

/// What a check looks at in a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    Task,
    Model,
    ContextLength,
    Budget,
    /// A request header (name lower-cased).
    Header(String),
    /// A key of the request's `metadata`.
    Metadata(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Eq(Value),
    Lt(f64),
    Le(f64),
    Gt(f64),
    Ge(f64),
    In(Vec<Value>),
}

impl When {
    /// Header names (lower-cased) the checks look at.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.checks.iter().filter_map(|c| match &c.subject {
            Subject::Header(h) => Some(h.as_str()),
            _ => None,
        })
    }
}

impl Subject {
    fn parse(key: &str) -> Result<Subject, String> {
        Ok(match key {
            "task" => Subject::Task,
            "model" => Subject::Model,
            "context_length" => Subject::ContextLength,
            "budget" => Subject::Budget,
            h if h.starts_with("header.") => Subject::Header(h[7..].to_ascii_lowercase()),
            m if m.starts_with("metadata.") => Subject::Metadata(m[9..].to_string()),
            _ => {
                return Err(
                    "unknown key (task, model, context_length, budget, header.NAME, metadata.KEY)"
                        .into(),
                )
            }
        })
    }
}

impl Cond {
    /// The comparison `op` against `x`.
    fn parse(op: &str, x: Value) -> Result<Cond, String> {
        let num = |x: &Value| x.as_f64().ok_or_else(|| format!("{x} is not a number"));
        Ok(match op {
            "lt" => Cond::Lt(num(&x)?),
            "le" => Cond::Le(num(&x)?),
            "gt" => Cond::Gt(num(&x)?),
            "ge" => Cond::Ge(num(&x)?),
            "eq" => Cond::Eq(x),
            "in" => match x {
                Value::Array(xs) => Cond::In(xs),
                _ => return Err("needs a list".into()),
            },
            _ => return Err("unknown comparison (lt, le, gt, ge, eq, in)".into()),
        })
    }
}

impl<'de> Deserialize<'de> for When {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<When, D::Error> {
        d.deserialize_map(WhenVisitor)
    }
}

struct WhenVisitor;

impl<'de> Visitor<'de> for WhenVisitor {
    type Value = When;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of conditions")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<When, A::Error> {
        let mut checks = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            checks.push(map.next_value_seed(CheckSeed(key))?);
        }
        Ok(When { checks })
    }
}

// Errors are raised while serde_yaml is inside the value they are about (the visitor
// methods below), so serde_yaml prefixes them with that value's path:
// `routes[0].when.tsk: unknown key`, `routes[0].when.budget.lt: "x" is not a number`.

/// The visitor methods for plain values (scalars and lists): each hands a JSON value to
/// `self.plain`.
macro_rules! plain_values {
    () => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            self.plain(Value::Bool(v)).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            self.plain(Value::from(v)).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            self.plain(Value::from(v)).map_err(E::custom)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            self.plain(Value::from(v)).map_err(E::custom)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            self.plain(Value::String(v.to_string())).map_err(E::custom)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            self.plain(Value::Null).map_err(E::custom)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            let v = Value::deserialize(SeqAccessDeserializer::new(seq))?;
            self.plain(v).map_err(de::Error::custom)
        }
    };
}

/// The value of one `when` key: a scalar (equals), a list (one of) or comparisons.
struct CheckSeed(String);

impl CheckSeed {
    fn plain(self, v: Value) -> Result<Check, String> {
        let subject = Subject::parse(&self.0)?;
        let cond = match v {
            Value::Array(xs) => Cond::In(xs),
            x => Cond::Eq(x),
        };
        Ok(Check {
            subject,
            conds: vec![cond],
        })
    }
}

impl<'de> DeserializeSeed<'de> for CheckSeed {
    type Value = Check;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Check, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CheckSeed {
    type Value = Check;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value, a list or a map of comparisons")
    }

    plain_values!();

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Check, A::Error> {
        let subject = Subject::parse(&self.0).map_err(de::Error::custom)?;
        let mut conds = Vec::new();
        while let Some(op) = map.next_key::<String>()? {
            conds.push(map.next_value_seed(CondSeed(op))?);
        }
        Ok(Check { subject, conds })
    }
}

/// The operand of one comparison (`lt: 0.01`).
struct CondSeed(String);

impl CondSeed {
    fn plain(self, v: Value) -> Result<Cond, String> {
        Cond::parse(&self.0, v)
    }
}

impl<'de> DeserializeSeed<'de> for CondSeed {
    type Value = Cond;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cond, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CondSeed {
    type Value = Cond;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value to compare with")
    }

    plain_values!();

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Cond, A::Error> {
        let v = Value::deserialize(MapAccessDeserializer::new(map))?;
        self.plain(v).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn when(yaml: &str) -> Result<When, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn compiles_scalars_lists_and_comparisons() {
        let w = when("{task: qa, header.X-Team: [red, blue], budget: {lt: 0.01, ge: 0}, metadata.tier: {eq: 2}}")
            .unwrap();
        assert_eq!(
            w.checks,
            [
                Check {
                    subject: Subject::Task,
                    conds: vec![Cond::Eq(Value::from("qa"))]
                },
                Check {
                    subject: Subject::Header("x-team".into()),
                    conds: vec![Cond::In(vec![Value::from("red"), Value::from("blue")])]
                },
                Check {
                    subject: Subject::Budget,
                    conds: vec![Cond::Lt(0.01), Cond::Ge(0.0)]
                },
                Check {
                    subject: Subject::Metadata("tier".into()),
                    conds: vec![Cond::Eq(Value::from(2))]
                },
            ]
        );
        assert_eq!(w.header_names().collect::<Vec<_>>(), ["x-team"]);
    }

    #[test]
    fn matcher_compile_errors_name_the_key() {
        for (yaml, path) in [
            (
                "{context_length: {between: 3}}",
                "context_length.between: unknown comparison",
            ),
            ("{tsk: reasoning}", "tsk: unknown key"),
            (
                "{budget: {lt: cheap}}",
                "budget.lt: \"cheap\" is not a number",
            ),
            ("{model: {in: gpt}}", "model.in: needs a list"),
        ] {
            let e = when(yaml).unwrap_err();
            assert!(e.starts_with(path), "{e:?} does not start with {path:?}");
        }
    }
}
