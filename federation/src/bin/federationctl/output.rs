//! How every command prints: a serializable value for `-o json` and `-o yaml`, and for the
//! human formats a [`Table`] (or a sentence) built from the same value.

use std::io::Write;

use clap::ValueEnum;
use serde::Serialize;

use crate::Failure;

/// `-o`: how to print.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Columns for a terminal.
    Table,
    /// The table with every column (addresses, identities, counters).
    Wide,
    /// The value as JSON.
    Json,
    /// The value as YAML.
    Yaml,
}

/// The output settings of one invocation.
#[derive(Clone, Copy)]
pub struct Out {
    /// `-o`.
    pub format: Format,
    /// Print table headers (`--no-headers` turns them off).
    pub headers: bool,
}

impl Out {
    /// Prints `value` as asked: JSON or YAML of the value, else what `human` writes.
    pub fn print<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce(&Out) -> String,
    ) -> Result<(), Failure> {
        let text = match self.format {
            Format::Table | Format::Wide => human(self),
            Format::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
            Format::Yaml => serde_norway::to_string(value)?,
        };
        std::io::stdout().write_all(text.as_bytes())?;
        Ok(())
    }

    /// A table as this invocation prints it (wide or not, with headers or not).
    pub fn table(&self, t: &Table) -> String {
        t.render(self.format == Format::Wide, self.headers)
    }
}

struct Column {
    header: &'static str,
    wide_only: bool,
    right: bool,
}

/// Rows under headers; each column as wide as its widest cell, two spaces apart, the last
/// column unpadded. Columns marked wide-only show with `-o wide`.
#[derive(Default)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
    /// Lines printed after the rows (conflicts, totals).
    pub notes: Vec<String>,
}

impl Table {
    /// A table with these columns.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            columns: headers
                .iter()
                .map(|h| Column {
                    header: h,
                    wide_only: false,
                    right: false,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Adds columns shown only with `-o wide`.
    pub fn wide(mut self, headers: &[&'static str]) -> Self {
        self.columns.extend(headers.iter().map(|h| Column {
            header: h,
            wide_only: true,
            right: false,
        }));
        self
    }

    /// Aligns these columns to the right (numbers).
    pub fn right(mut self, headers: &[&str]) -> Self {
        for c in &mut self.columns {
            if headers.contains(&c.header) {
                c.right = true;
            }
        }
        self
    }

    /// Adds a row: one cell per column, in order (wide-only cells included).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The text of the table.
    pub fn render(&self, wide: bool, headers: bool) -> String {
        let shown: Vec<usize> = (0..self.columns.len())
            .filter(|&i| wide || !self.columns[i].wide_only)
            .collect();
        let cell = |row: &Vec<String>, i: usize| row.get(i).map_or("", String::as_str).to_string();
        let header_row: Vec<String> = self.columns.iter().map(|c| c.header.to_string()).collect();
        let mut lines: Vec<&Vec<String>> = Vec::new();
        if headers {
            lines.push(&header_row);
        }
        lines.extend(&self.rows);
        let widths: Vec<usize> = shown
            .iter()
            .map(|&i| {
                lines
                    .iter()
                    .map(|r| cell(r, i).chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in lines {
            let mut line = String::new();
            for (n, (&i, w)) in shown.iter().zip(&widths).enumerate() {
                let text = cell(r, i);
                let pad = w.saturating_sub(text.chars().count());
                if n > 0 {
                    line.push_str("  ");
                }
                if self.columns[i].right {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(&text);
                } else {
                    line.push_str(&text);
                    if n + 1 < shown.len() {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(n);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(&["PEER", "LAG", "ERROR"])
            .wide(&["ADDRESS"])
            .right(&["LAG"]);
        t.row(vec![
            "a".into(),
            "7".into(),
            "".into(),
            "127.0.0.1:1".into(),
        ]);
        t.row(vec![
            "bbbb".into(),
            "12".into(),
            "reset".into(),
            "[::1]:2".into(),
        ]);
        t
    }

    #[test]
    fn columns_fit_their_widest_cell_and_wide_adds_columns() {
        assert_eq!(
            sample().render(false, true),
            "PEER  LAG  ERROR\na       7\nbbbb   12  reset\n"
        );
        assert_eq!(
            sample().render(true, true),
            "PEER  LAG  ERROR  ADDRESS\na       7         127.0.0.1:1\nbbbb   12  reset  [::1]:2\n"
        );
    }

    #[test]
    fn no_headers_prints_rows_only() {
        assert_eq!(sample().render(false, false), "a      7\nbbbb  12  reset\n");
    }
}
