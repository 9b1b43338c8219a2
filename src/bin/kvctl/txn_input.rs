//! `kvctl txn`'s standard input, in etcdctl's txn format:
//!
//! ```text
//! mod("gen") = "5"          compares, one a line, until a blank line
//! value("owner") != "me"
//!
//! put gen 6                 success ops (put, get, del with their flags), until a blank line
//!
//! get gen                   failure ops, until a blank line (or the end of the input)
//! ```
//!
//! A compare is `TARGET("KEY") OP "VALUE"` with TARGET one of `value`/`val`, `version`/`ver`,
//! `create`/`c`, `mod`/`m`, `lease` (its value in hex, as etcdctl reads it), OP one of `=`,
//! `!=`, `>`, `<`, and KEY and VALUE in double quotes (Go syntax: `\"`, `\\`, `\n`, `\t`) or
//! backquotes. An op line is split into words on whitespace, a double-quoted word unquoted;
//! its flags are those of the top-level `get` and `del` (and `put --prev-kv`). Leading and
//! trailing blanks of a line are ignored; anything after the failure ops' blank line is
//! ignored (as etcdctl does). Unlike etcdctl, the end of the input also ends a section.
//! Errors are one line: `line N: <etcdctl's message>`.

use clap::{Parser, Subcommand};
use kvstore::client::{Compare, TxnOp};

use super::{DeleteArgs, RangeArgs};

/// A parsed transaction.
#[derive(Debug, Default, PartialEq)]
pub struct TxnInput {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// Parses the whole input.
///
/// # Errors
/// The first malformed line, as `line N: <what is wrong>: <the line>`.
pub fn parse(input: &str) -> Result<TxnInput, String> {
    let mut txn = TxnInput::default();
    let mut section = 0;
    for (number, line) in input.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            section += 1;
            if section == 3 {
                break;
            }
            continue;
        }
        let at = |e: String| format!("line {}: {e}", number + 1);
        match section {
            0 => txn.compares.push(parse_compare(line).map_err(at)?),
            1 => txn.success.push(parse_op(line).map_err(at)?),
            _ => txn.failure.push(parse_op(line).map_err(at)?),
        }
    }
    Ok(txn)
}

/// One compare line: `TARGET("KEY") OP "VALUE"`.
pub fn parse_compare(line: &str) -> Result<Compare, String> {
    let malformed = || format!("malformed comparison: {line}");
    let (target, rest) = line.split_once('(').ok_or_else(malformed)?;
    let (key, rest) = quoted(rest.trim_start()).ok_or_else(malformed)?;
    let rest = rest.trim_start().strip_prefix(')').ok_or_else(malformed)?;
    let rest = rest.trim_start();
    let op_end = rest.find(char::is_whitespace).ok_or_else(malformed)?;
    let (op, rest) = rest.split_at(op_end);
    let (value, rest) = quoted(rest.trim_start()).ok_or_else(malformed)?;
    if !rest.trim().is_empty() {
        return Err(malformed());
    }
    let invalid = |why: String| format!("invalid txn compare request: {line} ({why})");
    let number = |base: u32| {
        i64::from_str_radix(&value, base).map_err(|_| invalid(format!("{value:?} is not a number")))
    };
    macro_rules! with_op {
        ($on:expr, $v:expr) => {
            match op {
                "=" | "==" => $on.eq($v),
                "!=" => $on.ne($v),
                ">" => $on.gt($v),
                "<" => $on.lt($v),
                _ => return Err(invalid(format!("unknown operator {op}; use =, !=, > or <"))),
            }
        };
    }
    Ok(match target.trim() {
        "val" | "value" => with_op!(Compare::value(&key), &value),
        "ver" | "version" => with_op!(Compare::version(&key), number(10)?),
        "c" | "create" => with_op!(Compare::create_revision(&key), number(10)?),
        "m" | "mod" => with_op!(Compare::mod_revision(&key), number(10)?),
        "lease" => with_op!(Compare::lease(&key), number(16)?),
        other => {
            return Err(format!(
                "malformed comparison: {line} (unknown target {other})"
            ))
        }
    })
}

/// A txn op line, parsed with clap like the top-level commands.
#[derive(Debug, Parser)]
#[command(no_binary_name = true, disable_help_subcommand = true)]
struct OpLine {
    #[command(subcommand)]
    op: OpCommand,
}

#[derive(Debug, Subcommand)]
enum OpCommand {
    Put {
        key: String,
        value: String,
        #[arg(long)]
        prev_kv: bool,
    },
    Get {
        key: String,
        #[command(flatten)]
        range: RangeArgs,
    },
    #[command(alias = "delete")]
    Del {
        key: String,
        #[command(flatten)]
        delete: DeleteArgs,
    },
}

/// One op line: `put KEY VALUE [--prev-kv]`, `get KEY [RANGE_END] [flags]`,
/// `del KEY [RANGE_END] [flags]`.
pub fn parse_op(line: &str) -> Result<TxnOp, String> {
    let invalid = || format!("invalid txn request: {line}");
    let words = argify(line).ok_or_else(invalid)?;
    if words.len() < 2 {
        return Err(invalid());
    }
    let parsed = OpLine::try_parse_from(words).map_err(|_| invalid())?;
    Ok(match parsed.op {
        OpCommand::Put {
            key,
            value,
            prev_kv,
        } => {
            let op = TxnOp::put(&key, &value);
            if prev_kv {
                op.with_prev_kv()
            } else {
                op
            }
        }
        OpCommand::Get { key, range } => TxnOp::range(&key, &range.options()?),
        OpCommand::Del { key, delete } => delete.op(&key)?,
    })
}

/// Splits an op line into words: whitespace-separated, a word in double quotes (Go syntax)
/// or backquotes taken as one. `None` on an unterminated quote.
fn argify(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        if rest.starts_with('"') || rest.starts_with('`') {
            let (word, after) = quoted(rest)?;
            words.push(word);
            rest = after;
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            words.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    Some(words)
}

/// A Go-quoted string at the start of `text` (`"..."` with escapes, or `` `...` `` raw) and
/// what follows it.
fn quoted(text: &str) -> Option<(String, &str)> {
    if let Some(raw) = text.strip_prefix('`') {
        let end = raw.find('`')?;
        return Some((raw[..end].to_string(), &raw[end + 1..]));
    }
    let body = text.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &body[i + 1..])),
            '\\' => out.push(match chars.next()?.1 {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                '0' => '\0',
                other @ ('\\' | '"' | '\'') => other,
                _ => return None,
            }),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvstore::client::RangeOptions;

    #[test]
    fn the_three_sections_parse_in_order() {
        let input = "mod(\"gen\") = \"5\"\n  value(\"owner\") != \"me\"  \n\nput gen 6\ndel tmp/ --prefix --prev-kv\n\nget gen\nget p/ --prefix --keys-only\n\n";
        let txn = parse(input).unwrap();
        assert_eq!(
            txn.compares,
            [
                Compare::mod_revision("gen").eq(5),
                Compare::value("owner").ne("me")
            ]
        );
        assert_eq!(
            txn.success,
            [
                TxnOp::put("gen", "6"),
                TxnOp::delete_prefix("tmp/").with_prev_kv()
            ]
        );
        let keys_only = RangeOptions {
            keys_only: true,
            ..RangeOptions::prefix()
        };
        assert_eq!(
            txn.failure,
            [TxnOp::get("gen"), TxnOp::range("p/", &keys_only)]
        );
    }

    #[test]
    fn every_target_alias_and_operator() {
        let cases = [
            ("version(\"k\") > \"1\"", Compare::version("k").gt(1)),
            ("ver(\"k\") < \"3\"", Compare::version("k").lt(3)),
            ("create(\"k\") = \"0\"", Compare::create_revision("k").eq(0)),
            ("c(\"k\") != \"4\"", Compare::create_revision("k").ne(4)),
            ("m(\"k\") = \"7\"", Compare::mod_revision("k").eq(7)),
            ("lease(\"k\") = \"1a\"", Compare::lease("k").eq(26)),
            ("val(\"k\") = \"a b\"", Compare::value("k").eq("a b")),
            (
                "value(`k\\`) = \"q\\\"t\"",
                Compare::value("k\\").eq("q\"t"),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_compare(line), Ok(expected), "{line}");
        }
    }

    #[test]
    fn empty_sections_and_a_missing_final_blank_line_are_fine() {
        let txn = parse("\nput k v\n").unwrap();
        assert!(txn.compares.is_empty() && txn.failure.is_empty());
        assert_eq!(txn.success, [TxnOp::put("k", "v")]);
        assert_eq!(parse("").unwrap(), TxnInput::default());
        let txn = parse("\n\n\n\nput ignored after the third blank line\n").unwrap();
        assert_eq!(txn, TxnInput::default());
    }

    #[test]
    fn quoted_op_words_keep_their_spaces() {
        assert_eq!(
            parse_op("put k \"two words\""),
            Ok(TxnOp::put("k", "two words"))
        );
        assert_eq!(parse_op("del a c"), Ok(TxnOp::delete_range("a", "c")));
        assert_eq!(
            parse_op("del a --from-key"),
            Ok(TxnOp::delete_from_key("a"))
        );
        assert_eq!(
            parse_op("put k v --prev-kv"),
            Ok(TxnOp::put("k", "v").with_prev_kv())
        );
    }

    #[test]
    fn errors_are_one_line_with_the_line_number() {
        let cases = [
            ("mod(\"k\") = 5\n", "line 1: malformed comparison: mod(\"k\") = 5"),
            ("mod \"k\" = \"5\"\n", "line 1: malformed comparison: mod \"k\" = \"5\""),
            (
                "size(\"k\") = \"5\"\n",
                "line 1: malformed comparison: size(\"k\") = \"5\" (unknown target size)",
            ),
            (
                "mod(\"k\") = \"x\"\n",
                "line 1: invalid txn compare request: mod(\"k\") = \"x\" (\"x\" is not a number)",
            ),
            (
                "mod(\"k\") >= \"1\"\n",
                "line 1: invalid txn compare request: mod(\"k\") >= \"1\" (unknown operator >=; use =, !=, > or <)",
            ),
            ("\nput k\n", "line 2: invalid txn request: put k"),
            ("\nput\n", "line 2: invalid txn request: put"),
            ("\n\nswap a b\n", "line 3: invalid txn request: swap a b"),
            ("\nput k \"v\n", "line 2: invalid txn request: put k \"v"),
            (
                "\nget k --prefix --from-key\n",
                "line 2: give at most one of RANGE_END, --prefix and --from-key",
            ),
        ];
        for (input, expected) in cases {
            let error = parse(input).unwrap_err();
            assert_eq!(error, expected, "{input:?}");
            assert_eq!(error.lines().count(), 1);
        }
    }
}
