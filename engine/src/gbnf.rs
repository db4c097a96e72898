//! GBNF (llama.cpp's EBNF dialect, what vLLM's `guided_grammar` and xgrammar take) into
//! the Lark dialect llguidance compiles: `name ::= ...` rules, `"..."` literals, `[...]`
//! classes, `.`, groups, `|`, `* + ?` and `{m,n}`, `#` comments; `root` is the start.

use std::fmt::Write;

/// Whether `text` is GBNF rather than Lark: it defines rules with `::=`.
pub fn looks_like_gbnf(text: &str) -> bool {
    text.contains("::=")
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Define,
    /// A literal, decoded.
    Str(String),
    /// A character class as a regex (`[...]`), already escaped for Lark's `/.../`.
    Class(String),
    Any,
    Open,
    Close,
    Bar,
    /// `*`, `+`, `?` or `{m,n}`, written as Lark writes it.
    Postfix(String),
}

/// One escaped character of a literal or class: `\n`, `\xHH`, `\uHHHH`, `\UHHHHHHHH`
/// or the character itself.
fn escaped(chars: &mut std::iter::Peekable<std::str::Chars>) -> Result<char, String> {
    let c = chars.next().ok_or("a `\\` at the end")?;
    let hex = |chars: &mut std::iter::Peekable<std::str::Chars>, n: usize| {
        let h: String = (0..n).filter_map(|_| chars.next()).collect();
        u32::from_str_radix(&h, 16)
            .ok()
            .filter(|_| h.len() == n)
            .and_then(char::from_u32)
            .ok_or_else(|| format!("bad escape \\{c}{h}"))
    };
    Ok(match c {
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'x' => hex(chars, 2)?,
        'u' => hex(chars, 4)?,
        'U' => hex(chars, 8)?,
        other => other,
    })
}

/// A character inside a regex class, escaped so Rust's regex and Lark's `/.../` both
/// read it literally.
fn class_char(c: char, out: &mut String) {
    match c {
        '\\' | ']' | '[' | '^' | '-' | '/' | '&' | '~' => {
            out.push('\\');
            out.push(c);
        }
        c if c.is_control() || c == ' ' => {
            let _ = write!(out, "\\x{{{:X}}}", c as u32);
        }
        c => out.push(c),
    }
}

fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => while chars.next().is_some_and(|c| c != '\n') {},
            ':' => {
                let s: String = chars.by_ref().take(3).collect();
                if s != "::=" {
                    return Err(format!("expected `::=`, found {s:?}"));
                }
                toks.push(Tok::Define);
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("an unterminated string".into()),
                        Some('"') => break,
                        Some('\\') => s.push(escaped(&mut chars)?),
                        Some(c) => s.push(c),
                    }
                }
                toks.push(Tok::Str(s));
            }
            '[' => {
                chars.next();
                let mut re = String::from("[");
                if chars.peek() == Some(&'^') {
                    chars.next();
                    re.push('^');
                }
                let mut empty = true;
                loop {
                    let c = match chars.next() {
                        None => return Err("an unterminated character class".into()),
                        Some(']') => break,
                        Some('\\') => escaped(&mut chars)?,
                        Some(c) => c,
                    };
                    empty = false;
                    class_char(c, &mut re);
                    // A range: `a-z` (a `-` before `]` is literal).
                    let mut look = chars.clone();
                    if look.next() == Some('-') && look.peek().is_some_and(|&n| n != ']') {
                        chars.next();
                        let hi = match chars.next() {
                            Some('\\') => escaped(&mut chars)?,
                            Some(h) => h,
                            None => return Err("an unterminated character class".into()),
                        };
                        if hi < c {
                            return Err(format!("the class range {c:?}-{hi:?} is reversed"));
                        }
                        re.push('-');
                        class_char(hi, &mut re);
                    }
                }
                if empty {
                    return Err("an empty character class".into());
                }
                re.push(']');
                toks.push(Tok::Class(re));
            }
            '.' => {
                chars.next();
                toks.push(Tok::Any);
            }
            '(' | ')' | '|' | '*' | '+' | '?' => {
                chars.next();
                toks.push(match c {
                    '(' => Tok::Open,
                    ')' => Tok::Close,
                    '|' => Tok::Bar,
                    _ => Tok::Postfix(c.to_string()),
                });
            }
            '{' => {
                let mut s = String::new();
                for c in chars.by_ref() {
                    s.push(c);
                    if c == '}' {
                        break;
                    }
                }
                let inner = s.trim_start_matches('{').trim_end_matches('}');
                let ok = s.ends_with('}')
                    && !inner.is_empty()
                    && inner.split(',').count() <= 2
                    && inner.split(',').enumerate().all(|(i, p)| {
                        p.trim().parse::<u32>().is_ok() || (i == 1 && p.trim().is_empty())
                    });
                if !ok {
                    return Err(format!("a bad repetition {s}"));
                }
                toks.push(Tok::Postfix(s.replace(' ', "")));
            }
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        s.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                toks.push(Tok::Ident(s));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(toks)
}

/// A GBNF rule name as a Lark rule name (lowercase, `_` for `-`, prefixed so no two
/// names and no Lark keyword collide).
fn rule_name(gbnf: &str) -> String {
    let mut s = String::from("g_");
    for c in gbnf.chars() {
        match c {
            '-' => s.push_str("_d"),
            '_' => s.push_str("__"),
            c if c.is_ascii_uppercase() => {
                s.push('_');
                s.push(c.to_ascii_lowercase());
            }
            c => s.push(c),
        }
    }
    s
}

/// Converts GBNF to Lark; an error names what is wrong and the rule it is in.
pub fn to_lark(text: &str) -> Result<String, String> {
    let toks = lex(text)?;
    let mut out = String::new();
    let mut defined = Vec::new();
    let mut used = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let name = match (&toks[i], toks.get(i + 1)) {
            (Tok::Ident(n), Some(Tok::Define)) => n.clone(),
            (t, _) => return Err(format!("expected a rule (`name ::= ...`), found {t:?}")),
        };
        i += 2;
        let mut body: Vec<String> = Vec::new();
        let mut depth = 0usize;
        let mut last_item = false;
        while i < toks.len() {
            if let (Tok::Ident(_), Some(Tok::Define)) = (&toks[i], toks.get(i + 1)) {
                break;
            }
            let piece = match &toks[i] {
                Tok::Ident(r) => {
                    used.push(r.clone());
                    rule_name(r)
                }
                Tok::Str(s) => serde_json::to_string(s).expect("a string serializes"),
                Tok::Class(c) => format!("/{c}/"),
                Tok::Any => "/(?s:.)/".to_string(),
                Tok::Open => {
                    depth += 1;
                    "(".to_string()
                }
                Tok::Close => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| format!("rule {name}: an unmatched `)`"))?;
                    ")".to_string()
                }
                Tok::Bar => "|".to_string(),
                Tok::Postfix(p) => {
                    match body.last_mut() {
                        Some(last) if last_item => last.push_str(p),
                        _ => return Err(format!("rule {name}: `{p}` follows nothing")),
                    }
                    last_item = false;
                    i += 1;
                    continue;
                }
                Tok::Define => return Err(format!("rule {name}: a stray `::=`")),
            };
            last_item = !matches!(toks[i], Tok::Open | Tok::Bar);
            body.push(piece);
            i += 1;
        }
        if depth != 0 {
            return Err(format!("rule {name}: an unclosed `(`"));
        }
        if body.is_empty() {
            body.push("\"\"".to_string());
        }
        if defined.contains(&name) {
            return Err(format!("rule {name} is defined twice"));
        }
        let _ = writeln!(out, "{}: {}", rule_name(&name), body.join(" "));
        defined.push(name);
    }
    if !defined.iter().any(|d| d == "root") {
        return Err("no `root` rule".into());
    }
    if let Some(u) = used.iter().find(|u| !defined.contains(u)) {
        return Err(format!("rule {u} is used but not defined"));
    }
    Ok(format!("start: {}\n{out}", rule_name("root")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gbnf_grammar_becomes_lark() {
        let g = r#"
            # a tiny arithmetic language
            root ::= expr ("\n" expr)*
            expr ::= term ([-+] term)*
            term ::= num-lit | "(" expr ")"
            num-lit ::= [0-9]{1,3} "."? [^\]\\/ ]?
        "#;
        assert!(looks_like_gbnf(g));
        let l = to_lark(g).unwrap();
        assert_eq!(
            l,
            "start: g_root\n\
             g_root: g_expr ( \"\\n\" g_expr )*\n\
             g_expr: g_term ( /[\\-+]/ g_term )*\n\
             g_term: g_num_dlit | \"(\" g_expr \")\"\n\
             g_num_dlit: /[0-9]/{1,3} \".\"? /[^\\]\\\\\\/\\x{20}]/?\n"
        );
    }

    #[test]
    fn broken_gbnf_is_refused_with_the_reason() {
        for (g, why) in [
            ("expr ::= \"a\"", "no `root`"),
            ("root ::= missing", "missing is used"),
            ("root ::= (\"a\"", "unclosed"),
            ("root ::= \"a", "unterminated string"),
            ("root ::= [z-a]", "reversed"),
            ("root ::= * \"a\"", "follows nothing"),
            ("root ::= \"a\"{x}", "bad repetition"),
            ("root ::= \"a\"\nroot ::= \"b\"", "twice"),
        ] {
            let e = to_lark(g).unwrap_err();
            assert!(e.contains(why), "{g}: {e}");
        }
    }
}
