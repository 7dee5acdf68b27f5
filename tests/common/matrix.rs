//! The README's SDK compatibility matrix, read back and checked against what each SDK
//! really sent (as a [`Wire`] recorded it) and which version is really installed, so the
//! table cannot drift from what the tests ran.

use std::path::Path;

use super::wire::Wire;

/// One row of the matrix, by column name.
pub struct Row {
    cells: Vec<(String, String)>,
}

impl Row {
    /// The README's row whose `package` column is `package` (in backticks) and whose
    /// `transport` column is `transport`.
    pub fn of(package: &str, transport: &str) -> Row {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("<!-- sdk-matrix"))
            .skip(1)
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert!(
            table.len() > 2,
            "README.md has no <!-- sdk-matrix --> table"
        );
        let split = |line: &str| -> Vec<String> {
            line.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        };
        let header = split(table[0]);
        let rows = table[2..].iter().map(|l| {
            let cells: Vec<(String, String)> = header.iter().cloned().zip(split(l)).collect();
            Row { cells }
        });
        let mut found = rows.filter(|r| {
            r.get("package") == format!("`{package}`") && r.get("transport") == transport
        });
        let row = found
            .next()
            .unwrap_or_else(|| panic!("README's SDK matrix has no row for {package} {transport}"));
        assert!(found.next().is_none(), "two rows for {package} {transport}");
        row
    }

    /// A cell, with the backticks of code spans removed from each value.
    pub fn get(&self, column: &str) -> String {
        self.cells
            .iter()
            .find(|(c, _)| c == column)
            .unwrap_or_else(|| panic!("the SDK matrix has no column {column}"))
            .1
            .clone()
    }

    fn plain(&self, column: &str) -> String {
        self.get(column).replace('`', "")
    }

    /// Checks the row against the installed `version` and what `wire` saw.
    pub fn check(&self, version: &str, wire: &Wire) {
        let package = self.get("package");
        assert_eq!(
            self.plain("version"),
            version,
            "{package}: installed version"
        );
        for (column, seen) in [
            ("endpoints", wire.summary(|s| s.path.clone())),
            ("Content-Type", wire.summary(|s| s.content_type.clone())),
            (
                "Content-Encoding",
                wire.summary(|s| s.content_encoding.clone()),
            ),
            ("write key", wire.summary(|s| s.auth.clone())),
        ] {
            assert_eq!(
                self.plain(column),
                seen,
                "{package} ({}): the README's {column} is not what the SDK sent",
                self.get("transport")
            );
        }
    }
}

/// The version of a Python distribution installed in the venv of `python`.
pub fn python_version(python: &Path, distribution: &str) -> String {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys; from importlib.metadata import version; print(version(sys.argv[1]))",
            distribution,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{distribution} is not installed for {}: run ./scripts/test, which installs it with \
         scripts/ensure-sdks.sh",
        python.display()
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The version of an npm package installed in tests/js.
pub fn npm_version(package: &str) -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/js/node_modules")
        .join(package)
        .join("package.json");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|_| {
        panic!(
            "{package} is not installed in tests/js: run ./scripts/test, which installs it \
             with scripts/ensure-node-sdks.sh (npm ci)"
        )
    });
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["version"].as_str().unwrap().to_owned()
}
