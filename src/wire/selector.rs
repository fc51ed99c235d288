//! Target selectors: which nodes an envelope is meant for.
//!
//! A selector is a comma-separated list of terms that must all match (AND):
//! `*`, `name=<glob>`, `tag.<key>=<glob>`, each optionally negated with `!`.
//! Globs know `*` (any run of characters) and `?` (exactly one character).
//!
//! Where the CLI takes `--target` more than once, a node matches if any of the
//! selectors matches (OR). To carry that in the one `dst.target` string of the
//! envelope, alternatives are joined with `|`: `name=web-*|tag.role=db`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A parsed target: one or more alternatives, any of which may match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    alternatives: Vec<Selector>,
    source: String,
}

/// One selector: terms that must all match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

/// One term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub negated: bool,
    pub test: TermTest,
}

/// What a term looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermTest {
    /// `*`: every node.
    All,
    /// `name=<glob>`.
    Name(String),
    /// `tag.<key>=<glob>`; a node without the tag does not match.
    Tag { key: String, glob: String },
}

/// Why a selector was rejected. It points at the bad term by its text and its
/// byte position in the whole selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad selector term `{term}` at position {position} of `{input}`: {reason}")]
pub struct SelectorError {
    pub input: String,
    pub term: String,
    pub position: usize,
    pub reason: String,
}

impl Target {
    /// Parses a target string (alternatives joined by `|`).
    pub fn parse(input: &str) -> Result<Target, SelectorError> {
        let mut alternatives = Vec::new();
        let mut offset = 0;
        for alternative in input.split('|') {
            alternatives.push(Selector::parse_at(input, alternative, offset)?);
            offset += alternative.len() + 1;
        }
        Ok(Target {
            alternatives,
            source: input.to_string(),
        })
    }

    /// Joins several CLI `--target` values into one target (OR), checking each.
    pub fn any_of(selectors: &[String]) -> Result<Option<Target>, SelectorError> {
        if selectors.is_empty() {
            return Ok(None);
        }
        for s in selectors {
            Target::parse(s)?;
        }
        Target::parse(&selectors.join("|")).map(Some)
    }

    /// True when the node with this name and these tags is targeted.
    pub fn matches(&self, name: &str, tags: &BTreeMap<String, String>) -> bool {
        self.alternatives.iter().any(|s| s.matches(name, tags))
    }

    /// The text the target was parsed from.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl FromStr for Target {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::parse(s)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Selector {
    /// Parses one selector (no `|`).
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        Selector::parse_at(input, input, 0)
    }

    fn parse_at(whole: &str, part: &str, base: usize) -> Result<Selector, SelectorError> {
        let error = |term: &str, position: usize, reason: String| SelectorError {
            input: whole.to_string(),
            term: term.to_string(),
            position,
            reason,
        };
        let mut terms = Vec::new();
        let mut offset = base;
        for raw in part.split(',') {
            let lead = raw.len() - raw.trim_start().len();
            let text = raw.trim();
            let position = offset + lead;
            offset += raw.len() + 1;
            if text.is_empty() {
                return Err(error(
                    text,
                    position,
                    "empty term (two commas in a row, or a comma at an end?)".into(),
                ));
            }
            let (negated, body) = match text.strip_prefix('!') {
                Some(rest) => (true, rest.trim_start()),
                None => (false, text),
            };
            let test = if body == "*" {
                TermTest::All
            } else if let Some(glob) = body.strip_prefix("name=") {
                check_glob(glob).map_err(|r| error(text, position, r))?;
                TermTest::Name(glob.to_string())
            } else if let Some(rest) = body.strip_prefix("tag.") {
                let (key, glob) = rest
                    .split_once('=')
                    .ok_or_else(|| error(text, position, "a tag term needs `=`, as in `tag.dc=ams`".into()))?;
                if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
                    return Err(error(
                        text,
                        position,
                        format!("tag key `{key}` must be non-empty letters, digits, `_`, `-` or `.`"),
                    ));
                }
                check_glob(glob).map_err(|r| error(text, position, r))?;
                TermTest::Tag {
                    key: key.to_string(),
                    glob: glob.to_string(),
                }
            } else {
                return Err(error(
                    text,
                    position,
                    "expected `*`, `name=<glob>` or `tag.<key>=<glob>`, optionally prefixed by `!`".into(),
                ));
            };
            terms.push(Term { negated, test });
        }
        Ok(Selector { terms })
    }

    /// True when every term matches.
    pub fn matches(&self, name: &str, tags: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| t.matches(name, tags))
    }

    pub fn terms(&self) -> &[Term] {
        &self.terms
    }
}

impl Term {
    fn matches(&self, name: &str, tags: &BTreeMap<String, String>) -> bool {
        let hit = match &self.test {
            TermTest::All => true,
            TermTest::Name(glob) => glob_match(glob, name),
            TermTest::Tag { key, glob } => tags.get(key).is_some_and(|v| glob_match(glob, v)),
        };
        hit != self.negated
    }
}

fn check_glob(glob: &str) -> Result<(), String> {
    if glob.is_empty() {
        return Err("the pattern after `=` is empty (use `*` to match anything)".into());
    }
    if let Some(c) = glob.chars().find(|c| c.is_whitespace() || *c == '|' || *c == ',') {
        return Err(format!("the pattern contains {c:?}, which selectors do not allow"));
    }
    Ok(())
}

/// Glob match with `*` (any run, possibly empty) and `?` (one character).
/// Backtracks only to the last `*`, so a hostile pattern costs at most
/// about pattern × text steps, never the exponential time of a naive
/// recursive matcher.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    glob_steps(pattern, text).0
}

/// [`glob_match`], and how many steps it took.
fn glob_steps(pattern: &str, text: &str) -> (bool, usize) {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    let mut steps = 0;
    while ti < t.len() {
        steps += 1;
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return (false, steps);
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    (pi == p.len(), steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn globs() {
        assert!(glob_match("web-*", "web-1"));
        assert!(glob_match("web-*", "web-"));
        assert!(!glob_match("web-*", "db-1"));
        assert!(glob_match("w?b-1", "wab-1"));
        assert!(!glob_match("w?b-1", "wb-1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*a*b*c", "xxaxxbxxc"));
        assert!(!glob_match("*a*b*c", "xxaxxbxx"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn hostile_globs_cost_at_most_pattern_times_text_steps() {
        // The classic blow-up for a recursive matcher: many stars that all
        // match, then a failure at the end (C(2000, 20) tries for it).
        let pattern = format!("{}b", "*a".repeat(20));
        let text = "a".repeat(2000);
        let (hit, steps) = glob_steps(&pattern, &text);
        assert!(!hit);
        assert!(
            steps <= (pattern.len() + 1) * (text.len() + 1),
            "{steps} steps for {} × {}",
            pattern.len(),
            text.len()
        );
        // A selector of such terms, matched against a long name, answers.
        let target = Target::parse(&format!("name={pattern},tag.k={pattern}")).unwrap();
        assert!(!target.matches(&text, &tags(&[("k", &text)])));
    }

    #[test]
    fn spec_example() {
        let t = Target::parse("name=web-*,tag.dc=ams,!tag.role=canary").unwrap();
        assert!(t.matches("web-1", &tags(&[("dc", "ams")])));
        assert!(t.matches("web-1", &tags(&[("dc", "ams"), ("role", "api")])));
        assert!(!t.matches("web-1", &tags(&[("dc", "ams"), ("role", "canary")])));
        assert!(!t.matches("web-1", &tags(&[("dc", "fra")])));
        assert!(!t.matches("db-1", &tags(&[("dc", "ams")])));
        assert!(!t.matches("web-1", &tags(&[])), "a missing tag does not match");
    }

    #[test]
    fn star_and_negation() {
        let none = tags(&[]);
        assert!(Target::parse("*").unwrap().matches("a", &none));
        assert!(!Target::parse("!*").unwrap().matches("a", &none));
        assert!(Target::parse("!name=b").unwrap().matches("a", &none));
        assert!(Target::parse(" name=a , * ").unwrap().matches("a", &none));
    }

    #[test]
    fn alternatives_are_or() {
        let t = Target::any_of(&["name=a".into(), "tag.role=db".into()])
            .unwrap()
            .unwrap();
        assert_eq!(t.as_str(), "name=a|tag.role=db");
        assert!(t.matches("a", &tags(&[])));
        assert!(t.matches("z", &tags(&[("role", "db")])));
        assert!(!t.matches("z", &tags(&[("role", "web")])));
        assert_eq!(Target::any_of(&[]).unwrap(), None);
    }

    #[test]
    fn errors_point_at_the_bad_term() {
        let e = Target::parse("name=web-*,nme=x").unwrap_err();
        assert_eq!(e.term, "nme=x");
        assert_eq!(e.position, 11);
        assert!(e.to_string().contains("`nme=x` at position 11"), "{e}");

        let e = Target::parse("name=a,,tag.x=y").unwrap_err();
        assert_eq!(e.position, 7);
        assert!(e.reason.contains("empty term"));

        let e = Target::parse("tag.dc").unwrap_err();
        assert!(e.reason.contains("needs `=`"));
        let e = Target::parse("tag.=x").unwrap_err();
        assert!(e.reason.contains("tag key"));
        let e = Target::parse("name=").unwrap_err();
        assert!(e.reason.contains("empty"));
        let e = Target::parse("name=a|tag.x").unwrap_err();
        assert_eq!((e.term.as_str(), e.position), ("tag.x", 7));
        assert!(Target::parse("").is_err());
        assert!(Target::any_of(&["name=a".into(), "bogus".into()]).is_err());
    }

    fn arb_term() -> impl Strategy<Value = String> {
        let glob = "[a-z0-9*?-]{1,8}";
        prop_oneof![
            Just("*".to_string()),
            glob.prop_map(|g| format!("name={g}")),
            ("[a-z]{1,5}", glob).prop_map(|(k, g)| format!("tag.{k}={g}")),
        ]
        .prop_flat_map(|t| prop_oneof![Just(t.clone()), Just(format!("!{t}"))])
    }

    proptest! {
        #[test]
        fn valid_selectors_round_trip(terms in prop::collection::vec(arb_term(), 1..5)) {
            let text = terms.join(",");
            let t = Target::parse(&text).unwrap();
            prop_assert_eq!(t.as_str(), text.as_str());
            prop_assert_eq!(Target::parse(t.as_str()).unwrap(), t);
        }

        #[test]
        fn parser_never_panics(s in ".{0,40}") {
            let _ = Target::parse(&s);
        }

        #[test]
        fn literal_globs_match_themselves(s in "[a-z0-9-]{1,16}") {
            prop_assert!(glob_match(&s, &s));
            prop_assert!(glob_match("*", &s));
        }
    }
}
