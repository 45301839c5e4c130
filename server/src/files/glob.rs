//! The patterns of `kura files find`: `*` (any run of characters but `/`), `**` (any run,
//! `/` included), `?` (one character but `/`), `[abc]`, `[a-z]`, `[!abc]`. A pattern without
//! `/` is matched against each entry's name, as `find -name` does; one with `/` against the
//! whole path from the filesystem's root (a leading `/` optional).

/// A parsed pattern.
pub struct Glob {
    tokens: Vec<Token>,
    /// Matched against the name only.
    name_only: bool,
}

enum Token {
    Char(char),
    Any,
    AnyDeep,
    One,
    Class { negated: bool, ranges: Vec<(char, char)> },
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        let name_only = !pattern.contains('/');
        let p = pattern.strip_prefix('/').unwrap_or(pattern);
        let chars: Vec<char> = p.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    tokens.push(Token::AnyDeep);
                    i += 2;
                    continue;
                }
                '*' => tokens.push(Token::Any),
                '?' => tokens.push(Token::One),
                '[' => {
                    let mut j = i + 1;
                    let negated = matches!(chars.get(j), Some('!' | '^'));
                    if negated {
                        j += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    while j < chars.len() && (chars[j] != ']' || first) {
                        first = false;
                        if chars.get(j + 1) == Some(&'-') && chars.get(j + 2).is_some_and(|c| *c != ']') {
                            ranges.push((chars[j], chars[j + 2]));
                            j += 3;
                        } else {
                            ranges.push((chars[j], chars[j]));
                            j += 1;
                        }
                    }
                    if j >= chars.len() {
                        return Err(format!("{pattern:?}: `[` without a closing `]`"));
                    }
                    tokens.push(Token::Class { negated, ranges });
                    i = j;
                }
                c => tokens.push(Token::Char(c)),
            }
            i += 1;
        }
        Ok(Glob { tokens, name_only })
    }

    /// Whether `path` (components from the root) matches.
    pub fn matches(&self, path: &[String]) -> bool {
        let text: Vec<char> = if self.name_only {
            path.last().map(|s| s.chars().collect()).unwrap_or_default()
        } else {
            path.join("/").chars().collect()
        };
        matches_at(&self.tokens, &text)
    }
}

/// Dynamic programming over (token, text position): time `tokens × text`, no backtracking
/// blow-up on patterns with many stars.
fn matches_at(tokens: &[Token], text: &[char]) -> bool {
    // ok[x]: the tokens so far match text[..x].
    let mut ok = vec![false; text.len() + 1];
    ok[0] = true;
    for tok in tokens {
        let mut next = vec![false; text.len() + 1];
        match tok {
            Token::Any | Token::AnyDeep => {
                let deep = matches!(tok, Token::AnyDeep);
                for x in 0..=text.len() {
                    next[x] = ok[x] || (x > 0 && next[x - 1] && (deep || text[x - 1] != '/'));
                }
            }
            _ => {
                for x in 1..=text.len() {
                    let c = text[x - 1];
                    let hit = match tok {
                        Token::Char(p) => c == *p,
                        Token::One => c != '/',
                        Token::Class { negated, ranges } => {
                            c != '/' && ranges.iter().any(|(a, b)| (*a..=*b).contains(&c)) != *negated
                        }
                        Token::Any | Token::AnyDeep => unreachable!("handled above"),
                    };
                    next[x] = ok[x - 1] && hit;
                }
            }
        }
        ok = next;
    }
    ok[text.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        let p: Vec<String> = path.split('/').filter(|c| !c.is_empty()).map(String::from).collect();
        Glob::new(pattern).unwrap().matches(&p)
    }

    #[test]
    fn names_paths_stars_and_classes() {
        assert!(m("*.conf", "/etc/kura/a.conf"));
        assert!(!m("*.conf", "/etc/kura/a.conf.bak"));
        assert!(m("passwd", "/etc/passwd"));
        assert!(m("/etc/*", "/etc/passwd"));
        assert!(!m("/etc/*", "/etc/kura/a.conf"));
        assert!(m("/etc/**", "/etc/kura/a.conf"));
        assert!(m("**/a.conf", "/etc/kura/a.conf"));
        assert!(m("/usr/**/file?.dat", "/usr/share/misc/deep/dir0/file4.dat"));
        assert!(!m("/usr/**/file?.dat", "/usr/share/misc/deep/dir0/file14.dat"));
        assert!(m("file[0-9].dat", "/x/file7.dat"));
        assert!(!m("file[!0-9].dat", "/x/file7.dat"));
        assert!(m("[]]", "/]"));
        assert!(m("*a*b*c", "/xxaxxbxxc"));
        assert!(!m("*a*b*c", "/xxaxxbxxcx"));
        assert!(Glob::new("[abc").is_err());
        // A pathological pattern ends quickly.
        let long = format!("/{}", "a".repeat(200));
        assert!(!m(&format!("{}b", "*a".repeat(20)), &long));
    }
}
