//! Aligned text tables for a person reading the console (`--json` prints the API's JSON).

use serde_json::Value;

/// A column: its heading and how a row's cell is read from the JSON object.
pub struct Column<'a> {
    pub heading: &'a str,
    pub cell: Box<dyn Fn(&Value) -> String + 'a>,
}

impl<'a> Column<'a> {
    /// The value at `path` (keys separated by `.`), as text; `-` when absent or null.
    pub fn field(heading: &'a str, path: &'a str) -> Column<'a> {
        Column {
            heading,
            cell: Box::new(move |row| text(lookup(row, path))),
        }
    }

    pub fn with(heading: &'a str, cell: impl Fn(&Value) -> String + 'a) -> Column<'a> {
        Column {
            heading,
            cell: Box::new(cell),
        }
    }
}

pub fn lookup<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

/// A JSON value as a table cell.
pub fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.into(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| text(Some(x)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// Renders `rows` under `columns`, each column as wide as its widest cell; "(none)" when
/// there are no rows.
pub fn render(columns: &[Column<'_>], rows: &[Value]) -> String {
    if rows.is_empty() {
        return "(none)\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| clean((c.cell)(r))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .chain([c.heading.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, items: &mut dyn Iterator<Item = String>| {
        let row: Vec<String> = items
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        out.push_str(row.join("  ").trim_end());
        out.push('\n');
    };
    line(
        &mut out,
        &mut columns.iter().map(|c| c.heading.to_uppercase()),
    );
    for row in cells {
        line(&mut out, &mut row.into_iter());
    }
    out
}

/// Control characters from the node's data (a caller's From header is the caller's to
/// choose) never reach the operator's terminal.
fn clean(s: String) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    } else {
        s
    }
}

/// `key  value` lines, keys aligned.
pub fn pairs(items: &[(&str, String)]) -> String {
    let w = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    items
        .iter()
        .map(|(k, v)| format!("{k:<w$}  {}\n", clean(v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_align_and_absent_values_are_dashes() {
        let rows = vec![
            json!({"id": "a", "n": 1, "x": {"y": true}}),
            json!({"id": "longer", "n": null}),
        ];
        let cols = [
            Column::field("id", "id"),
            Column::field("n", "n"),
            Column::field("deep", "x.y"),
        ];
        assert_eq!(
            render(&cols, &rows),
            "ID      N  DEEP\na       1  yes\nlonger  -  -\n"
        );
        assert_eq!(render(&cols, &[]), "(none)\n");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let rows = vec![json!({"id": "evil\u{1b}[2J"})];
        assert_eq!(
            render(&[Column::field("id", "id")], &rows),
            "ID\nevil?[2J\n"
        );
    }
}
