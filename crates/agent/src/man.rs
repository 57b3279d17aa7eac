//! `wg-agent man`: one roff page for the whole command line. clap_mangen renders the title,
//! name, synopsis and description; the subcommands, their options, exit status, files and
//! examples follow in the same page (no per-subcommand pages to install).

use std::fmt::Write as _;

/// The whole page, from the clap definition `cmd`.
pub(crate) fn render(cmd: &clap::Command) -> std::io::Result<String> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut head = Vec::new();
    man.render_title(&mut head)?;
    man.render_name_section(&mut head)?;
    man.render_synopsis_section(&mut head)?;
    man.render_description_section(&mut head)?;
    let mut page = String::from_utf8_lossy(&head).into_owned();
    page.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands() {
        let usage: Vec<String> = sub
            .get_arguments()
            .filter(|a| a.is_positional())
            .map(|a| format!("\\fI{}\\fR", escape(&value_name(a))))
            .collect();
        let _ = writeln!(
            page,
            ".SS \"wg\\-agent {} {}\"",
            escape(sub.get_name()),
            usage.join(" ")
        );
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            let _ = writeln!(page, "{}", escape(&about.to_string()));
        }
        for arg in sub.get_arguments() {
            if arg.is_hide_set() || arg.get_id() == "help" {
                continue;
            }
            let mut names = Vec::new();
            if let Some(short) = arg.get_short() {
                names.push(format!("\\fB\\-{short}\\fR"));
            }
            if let Some(long) = arg.get_long() {
                names.push(format!("\\fB\\-\\-{}\\fR", escape(long)));
            }
            let takes_value = arg.get_action().takes_values();
            let mut item = if names.is_empty() {
                format!("\\fI{}\\fR", escape(&value_name(arg)))
            } else if takes_value {
                format!("{} \\fI{}\\fR", names.join(", "), escape(&value_name(arg)))
            } else {
                names.join(", ")
            };
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_owned())
                .collect();
            if takes_value && !values.is_empty() && !arg.is_positional() {
                item = format!("{item} [{}]", escape(&values.join("|")));
            }
            let _ = writeln!(page, ".TP\n{item}");
            if let Some(help) = arg.get_long_help().or(arg.get_help()) {
                let _ = writeln!(page, "{}", escape(&help.to_string()));
            }
            if arg.is_positional() && !values.is_empty() {
                let _ = writeln!(page, ".br\nOne of: {}.", escape(&values.join(", ")));
            }
        }
    }
    page.push_str(EXTRA);
    Ok(page)
}

fn value_name(arg: &clap::Arg) -> String {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map_or_else(
            || arg.get_id().to_string().to_uppercase(),
            |n| n.to_string(),
        )
}

/// Roff escaping: backslashes and dashes, and a leading `.` or `'` that would read as a request.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}

const EXTRA: &str = r#".SH "EXIT STATUS"
0 success; 1 runtime failure (including \fBstatus \-\-check\fR when no gateway is up or the agent cannot be reached); 2 bad configuration or usage.
.SH ENVIRONMENT
.TP
\fBTOKIO_WORKER_THREADS\fR
Worker threads of \fBrun\fR (default: one fewer than the CPUs the process may use, at least one) and of \fBdemo\fR (default: every CPU). A value that is not a positive number is refused (exit 2).
.SH FILES
.TP
\fI/etc/wg\-agent/agent.toml\fR
The configuration (TOML) the packaged service runs.
.TP
\fI/etc/wg\-agent/private.key\fR
The private key, passed to the service with \fBLoadCredential=\fR and read through \fBprivate_key_credential\fR.
.TP
\fI/lib/systemd/system/wg\-agent.service\fR
The hardened systemd unit (not enabled on install).
.TP
\fI/usr/share/doc/wg\-agent/\fR
Configuration reference and operations guide.
.SH "ADMIN ENDPOINT"
By default on \fB127.0.0.1:5182\fR: \fB/healthz\fR, \fB/readyz\fR, \fB/status\fR (JSON) and \fB/metrics\fR (Prometheus). With \fB[admin] allow_remote = true\fR it may listen on any address; remote clients then get \fB/healthz\fR, \fB/readyz\fR and \fB/metrics\fR only.
.SH EXAMPLES
.nf
wg\-agent genkey > agent.key && chmod 600 agent.key
wg\-agent pubkey < agent.key
wg\-agent check \-\-config agent.toml
wg\-agent run \-\-config agent.toml
wg\-agent status
wg\-agent status \-\-check
wg\-agent import /etc/wireguard/wg0.conf \-\-route 80=127.0.0.1:8080 > agent.toml
.fi
.SH "SEE ALSO"
\fBwg\fR(8), \fBwg\-quick\fR(8), \fBsystemd.exec\fR(5)
"#;
