//! `conjoiner members`: the cluster's members with address, status and tags.

use super::client::ApiClient;
use super::{read_targets, CliError, EXIT_OK};
use crate::actors::Member;
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct MembersArgs {
    /// Only members with this status: alive, suspect, dead or left.
    #[arg(long)]
    pub status: Option<String>,
    /// Only members matching this selector (repeat for OR).
    #[arg(long)]
    pub target: Vec<String>,
}

pub async fn run(http: &str, json: bool, args: MembersArgs) -> Result<i32, CliError> {
    let target = read_targets(&args.target)?;
    let mut query = Vec::new();
    if let Some(s) = &args.status {
        query.push(("status", s.as_str()));
    }
    if let Some(t) = &target {
        query.push(("target", t.as_str()));
    }
    let raw: Value = ApiClient::new(http).get("/v1/members", &query).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&raw).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    let members: Vec<Member> = serde_json::from_value(raw)
        .map_err(|e| CliError::error(format!("the node's members answer is not what this CLI reads: {e}")))?;
    print!("{}", screen(&members));
    Ok(EXIT_OK)
}

/// The members table.
pub fn screen(members: &[Member]) -> String {
    let rows: Vec<[String; 4]> = members
        .iter()
        .map(|m| {
            let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [
                m.name.clone(),
                m.addr.clone().unwrap_or_else(|| "-".into()),
                m.status.as_str().to_string(),
                tags.join(","),
            ]
        })
        .collect();
    format_table(["NAME", "ADDR", "STATUS", "TAGS"], &rows)
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    print!("{}", format_table(header, rows));
}

/// The widest a table cell is shown, in characters: what a peer reports
/// may be far longer. Wide enough that a module's status JSON prints whole
/// when piped (on a terminal the commands cut it to the screen first);
/// `--json` gives everything.
pub const MAX_CELL_CHARS: usize = 4096;

/// `text`, cut to `MAX_CELL_CHARS` characters with the cut marked, and
/// its control characters written out (see [`visible`]).
pub fn cell(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) && text.char_indices().nth(MAX_CELL_CHARS).is_none() {
        return text.into();
    }
    let mut shown: Vec<char> = shown_chars(text).take(MAX_CELL_CHARS + 1).collect();
    if shown.len() > MAX_CELL_CHARS {
        shown.truncate(MAX_CELL_CHARS - 1);
        shown.push('…');
    }
    shown.into_iter().collect::<String>().into()
}

/// `text` with its control characters written out (`\n`, `\u{1b}`): what
/// a peer or a module reports is printed, never obeyed by the terminal, and
/// a row stays one line.
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        shown_chars(text).collect::<String>().into()
    } else {
        text.into()
    }
}

fn shown_chars(text: &str) -> impl Iterator<Item = char> + '_ {
    text.chars().flat_map(|c| {
        let escaped = c.is_control().then(|| c.escape_debug());
        let plain = (!c.is_control()).then_some(c);
        escaped.into_iter().flatten().chain(plain)
    })
}

/// Rows under a header, each column as wide as its widest cell, one line
/// each. Cells longer than `MAX_CELL_CHARS` are cut, and the padding is
/// written out rather than asked of `format!`, whose width is limited.
pub fn format_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let rows: Vec<Vec<std::borrow::Cow<'_, str>>> =
        rows.iter().map(|row| row.iter().map(|c| cell(c)).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(c);
            text.extend(std::iter::repeat_n(' ', w.saturating_sub(c.chars().count())));
        }
        format!("{}\n", text.trim_end())
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(|c| c.as_ref()).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_900000_character_name_is_cut_and_marked_not_a_panic() {
        let name = "n".repeat(900_000);
        let out = format_table(
            ["NAME", "STATUS"],
            &[[name, "alive".into()], ["n2".into(), "dead".into()]],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with(&"n".repeat(MAX_CELL_CHARS - 1)));
        assert!(lines[1].contains("…  alive"), "{}", &lines[1][lines[1].len() - 20..]);
        assert!(lines[2].starts_with("n2 "), "columns stay aligned");
        assert_eq!(
            cell(&"x".repeat(MAX_CELL_CHARS)),
            "x".repeat(MAX_CELL_CHARS),
            "a cell that fits is whole"
        );
    }

    proptest! {
        /// Whatever text the answers hold, the table prints it: one line
        /// per row, none wider than the cut cells allow.
        #[test]
        fn any_cells_make_a_table(rows in proptest::collection::vec(
            proptest::array::uniform3(any::<String>()), 0..8), long in 0usize..9000) {
            let mut rows = rows;
            rows.push(["é".repeat(long), String::new(), "\u{0}".into()]);
            let out = format_table(["A", "B", "C"], &rows);
            let widest = 3 * MAX_CELL_CHARS + 4;
            for line in out.split_terminator('\n') {
                prop_assert!(line.chars().count() <= widest, "{} chars", line.chars().count());
            }
        }
    }
}
