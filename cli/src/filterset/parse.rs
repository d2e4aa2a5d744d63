//! The parser of nextest's filterset language: `test(~db) & !kind(bench) | package(#app-*)`.
//! Precedence, loosest first: `or` `|` `+`; `and` `&` and `-` (and not); `not` `!`; parentheses.
//! Every error carries the byte offset of the character it is about.

use super::{Expr, Field, Matcher};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the expression.
    pub at: usize,
    pub message: String,
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut p = Parser { text, pos: 0 };
    let expr = p.or()?;
    p.skip_space();
    if p.pos < text.len() {
        return Err(p.error("expected an operator (`|`, `&`, `-`) or the end"));
    }
    Ok(expr)
}

impl Parser<'_> {
    fn error(&self, message: &str) -> ParseError {
        ParseError {
            at: self.pos,
            message: message.to_owned(),
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    /// Takes `symbol`, or the word `word` when it stands alone.
    fn eat(&mut self, symbol: &str, word: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(symbol) {
            self.pos += symbol.len();
            return true;
        }
        let rest = self.rest();
        if rest.starts_with(word)
            && !rest[word.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '(')
        {
            self.pos += word.len();
            return true;
        }
        false
    }

    fn eat_symbol(&mut self, symbol: &str) -> bool {
        self.skip_space();
        let found = self.rest().starts_with(symbol);
        if found {
            self.pos += symbol.len();
        }
        found
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.eat("|", "or") || self.eat("+", "or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        loop {
            if self.eat("&", "and") {
                left = Expr::And(Box::new(left), Box::new(self.unary()?));
            } else if self.eat_symbol("-") {
                let right = self.unary()?;
                left = Expr::And(Box::new(left), Box::new(Expr::Not(Box::new(right))));
            } else {
                return Ok(left);
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat("!", "not") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, ParseError> {
        self.skip_space();
        if self.rest().starts_with('(') {
            self.pos += 1;
            let inner = self.or()?;
            self.skip_space();
            if !self.rest().starts_with(')') {
                return Err(self.error("expected `)`"));
            }
            self.pos += 1;
            return Ok(inner);
        }
        let start = self.pos;
        let name: String = self
            .rest()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            return Err(self.error("expected a predicate such as `test(...)`, `not` or `(`"));
        }
        self.pos += name.len();
        if !self.rest().starts_with('(') {
            return Err(self.error(&format!("expected `(` after `{name}`")));
        }
        self.pos += 1;
        let field = match name.as_str() {
            "all" | "none" => {
                self.skip_space();
                if !self.rest().starts_with(')') {
                    return Err(self.error(&format!("`{name}()` takes no argument")));
                }
                self.pos += 1;
                return Ok(if name == "all" { Expr::All } else { Expr::None });
            }
            "test" => Field::Test,
            "package" => Field::Package,
            "deps" => Field::Deps,
            "rdeps" => Field::Rdeps,
            "binary" => Field::Binary,
            "binary_id" => Field::BinaryId,
            "kind" => Field::Kind,
            "platform" | "default" | "group" => {
                return Err(ParseError {
                    at: start,
                    message: format!("`{name}()` is not supported by testfleet"),
                });
            }
            _ => {
                return Err(ParseError {
                    at: start,
                    message: format!(
                        "unknown predicate `{name}` (all, none, test, package, deps, rdeps, binary, binary_id, kind)"
                    ),
                });
            }
        };
        let matcher = self.matcher(field)?;
        Ok(Expr::Match(field, matcher))
    }

    /// `=text`, `~text`, `/regex/`, `#glob` or bare text (the field's default), up to `)`.
    fn matcher(&mut self, field: Field) -> Result<Matcher, ParseError> {
        self.skip_space();
        let start = self.pos;
        if self.rest().starts_with('/') {
            self.pos += 1;
            let body_start = self.pos;
            let mut escaped = false;
            let end = self.rest().char_indices().find(|(_, c)| {
                let stop = *c == '/' && !escaped;
                escaped = *c == '\\' && !escaped;
                stop
            });
            let Some((len, _)) = end else {
                return Err(ParseError {
                    at: start,
                    message: "unterminated regex: expected a closing `/`".into(),
                });
            };
            let body = self.text[body_start..body_start + len].replace("\\/", "/");
            self.pos = body_start + len + 1;
            let re = regex::Regex::new(&body).map_err(|e| ParseError {
                at: body_start,
                message: format!("invalid regex: {e}"),
            })?;
            self.close()?;
            return Ok(Matcher::Regex(re));
        }
        let end = self.rest().find(')').ok_or_else(|| ParseError {
            at: self.text.len(),
            message: "expected `)`".into(),
        })?;
        let raw = self.text[self.pos..self.pos + end].trim_end();
        self.pos += end + 1;
        let (kind, text) = match raw.chars().next() {
            Some('=') => ('=', &raw[1..]),
            Some('~') => ('~', &raw[1..]),
            Some('#') => ('#', &raw[1..]),
            _ => (field.default_matcher(), raw),
        };
        if text.is_empty() {
            return Err(ParseError {
                at: start,
                message: "expected a name to match".into(),
            });
        }
        Ok(match kind {
            '=' => Matcher::Equal(text.to_owned()),
            '~' => Matcher::Contains(text.to_owned()),
            _ => {
                let glob = globset::GlobBuilder::new(text)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| ParseError {
                        at: start,
                        message: format!("invalid glob: {e}"),
                    })?
                    .compile_matcher();
                Matcher::Glob(glob)
            }
        })
    }

    fn close(&mut self) -> Result<(), ParseError> {
        self.skip_space();
        if !self.rest().starts_with(')') {
            return Err(self.error("expected `)`"));
        }
        self.pos += 1;
        Ok(())
    }
}
