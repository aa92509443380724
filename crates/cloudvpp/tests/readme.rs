//! Every `cloudvpp ...` command line in README.md parses (in-process, with clap), and every
//! flag the README names for `serve` exists on `cloudvpp serve`.

use clap::{CommandFactory, Parser};

const README: &str = include_str!("../../../README.md");
const OPERATIONS: &str = include_str!("../../../docs/OPERATIONS.md");

/// Shell words of `line`, up to the first operator (`>`, `|`, `&`, `;`) or comment;
/// quotes removed, `$VAR` kept as it is.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None if matches!(c, '>' | '|' | '&' | ';') || (c == '#' && !in_word) => break,
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// The argument lists of the `cloudvpp` commands in `line` (a shell line, or the content
/// of an inline code span): after a `cloudvpp` word, or after `cargo run ... --`.
fn commands(line: &str) -> Vec<Vec<String>> {
    if line.contains("cloudvpp()") {
        return Vec::new(); // the shell function that stands for the binary
    }
    let mut found = Vec::new();
    // A command substitution (`T=$(cargo run ... -- appsbooks ...)`) is read as a command.
    let line = line.replace("$(", " ").replace(')', " ");
    let w = words(&line);
    let mut i = 0;
    while i < w.len() {
        if w[i] == "cloudvpp" {
            found.push(w[i + 1..].to_vec());
            break;
        }
        if w[i] == "cargo" && w.get(i + 1).map(String::as_str) == Some("run") {
            if let Some(dash) = w[i..].iter().position(|x| x == "--") {
                found.push(w[i + dash + 1..].to_vec());
            }
            break;
        }
        i += 1;
    }
    found
}

/// Lines of shell in fenced blocks (indented four spaces, or between ```), and inline
/// code spans of prose that start with `cloudvpp `.
fn command_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || line.starts_with("    ") {
            lines.push(line.trim().to_string());
            continue;
        }
        for (n, span) in line.split('`').enumerate() {
            if n % 2 == 1 && span.starts_with("cloudvpp ") {
                lines.push(span.to_string());
            }
        }
    }
    lines
}

#[test]
fn the_command_line_is_well_formed() {
    cloudvpp::Cli::command().debug_assert();
}

#[test]
fn every_readme_command_line_parses() {
    let parsed = parse_all(README, "README.md");
    // The walk-throughs hold a few dozen; a parser that finds none tests nothing.
    assert!(
        parsed >= 20,
        "only {parsed} command lines found in README.md"
    );
}

#[test]
fn every_command_line_of_the_operations_guide_parses() {
    let parsed = parse_all(OPERATIONS, "docs/OPERATIONS.md");
    assert!(
        parsed >= 8,
        "only {parsed} command lines found in docs/OPERATIONS.md"
    );
}

/// Parses every `cloudvpp` command line of `text`; returns how many there were.
fn parse_all(text: &str, name: &str) -> usize {
    // The documents export the admin API key before the commands that need it.
    std::env::set_var("CLOUDVPP_API_KEY", "from-the-environment");
    let mut parsed = 0;
    for line in command_lines(text) {
        for args in commands(&line) {
            // Shell variables the documents set from a command's output, given a value of
            // the shape they hold (a location is a number).
            let args: Vec<String> = args
                .iter()
                .map(|a| match a.as_str() {
                    "$LOC" => "1".to_string(),
                    _ => a.clone(),
                })
                .collect();
            let argv = std::iter::once("cloudvpp".to_string()).chain(args.iter().cloned());
            match cloudvpp::Cli::try_parse_from(argv) {
                Ok(_) => {}
                // `--version` and `--help` are complete command lines that print and stop.
                Err(e)
                    if matches!(
                        e.kind(),
                        clap::error::ErrorKind::DisplayVersion
                            | clap::error::ErrorKind::DisplayHelp
                    ) => {}
                Err(e) => panic!("{name}: `cloudvpp {}` does not parse:\n{e}", args.join(" ")),
            }
            parsed += 1;
        }
    }
    parsed
}

/// Prose paragraphs, and runs of `#` comment lines in code, that name `serve`.
fn paragraphs_about_serve() -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut comments = String::new();
    let mut fenced = false;
    for line in README.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push(std::mem::take(&mut cur));
            continue;
        }
        if fenced {
            match line.trim_start().strip_prefix('#') {
                Some(c) => comments.push_str(c),
                None => out.push(std::mem::take(&mut comments)),
            }
        } else if line.trim().is_empty() {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    out.push(cur);
    out.push(comments);
    out.retain(|p| p.contains("`serve`"));
    out
}

#[test]
fn every_flag_the_readme_gives_serve_exists_on_serve() {
    let cli = cloudvpp::Cli::command();
    let serve = cli.find_subcommand("serve").expect("cloudvpp serve");
    let mut checked = 0;
    for paragraph in paragraphs_about_serve() {
        for flag in paragraph
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter_map(|w| w.strip_prefix("--"))
            .filter(|f| !f.is_empty())
        {
            assert!(
                serve.get_arguments().any(|a| a.get_long() == Some(flag)),
                "README names --{flag} for `serve`, which has no such flag"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} flags checked");
}

#[test]
fn the_shell_words_are_read_as_a_shell_would() {
    assert_eq!(
        commands(r#"cloudvpp appsbooks org create --name "Acme Schools" > acme.vpptoken"#),
        vec![vec!["appsbooks", "org", "create", "--name", "Acme Schools"]]
    );
    assert_eq!(
        commands("T=$(cargo run -q --release -- appsbooks org create --name ORG12345)"),
        vec![vec!["appsbooks", "org", "create", "--name", "ORG12345"]]
    );
    assert_eq!(
        commands("cloudvpp mdm serve --ca ca.pem --api-key secret &    # 127.0.0.1:9000"),
        vec![vec![
            "mdm",
            "serve",
            "--ca",
            "ca.pem",
            "--api-key",
            "secret"
        ]]
    );
    assert!(commands(r#"cloudvpp() { cargo run -q --release -- "$@"; }"#).is_empty());
}

/// `cloudvpp --version` names the commit it was built from (when built in a repository),
/// and the completion scripts and the manual page come from the same command line.
#[test]
fn version_completions_and_manual_page() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudvpp"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let version = run(&["--version"]);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match head {
        Ok(out) if out.status.success() => {
            let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(
                version.trim(),
                format!("cloudvpp {} ({commit})", env!("CARGO_PKG_VERSION"))
            );
        }
        // Built outside a repository: the version says so.
        _ => assert!(version.contains("unknown commit"), "{version}"),
    }
    for (shell, marker) in [
        ("bash", "_cloudvpp()"),
        ("zsh", "#compdef cloudvpp"),
        ("fish", "complete -c cloudvpp"),
    ] {
        let script = run(&["completions", shell]);
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..200.min(script.len())]
        );
        assert!(
            script.contains("appsbooks"),
            "{shell} completes subcommands"
        );
    }
    let man = run(&["man"]);
    assert!(man.contains(".TH cloudvpp 1"), "{}", &man[..200]);
    assert!(man.contains("appsbooks"));
}
