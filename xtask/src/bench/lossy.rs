//! The lossy rows (issue 12): both setups again, each with the testbed's impaired relay between
//! the agent side and its gateway (on the agent namespace's loopback, impairing both
//! directions alike), at three link profiles. Per profile: download (the agent side sends)
//! then upload (the gateway's kernel TCP sends), ours then the reference, each bounded in time.

use std::time::{Duration, Instant};

use testbed::{Impairment, RelayStats};

use super::measure::{self, Transfer};
use super::report::{Report, Row, Target};
use super::setup::{Files, Side};

/// One link profile of the lossy rows.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    /// Short name in the report: `a`, `b`, `c`.
    pub(crate) name: &'static str,
    /// What the link is, in words.
    pub(crate) describe: &'static str,
    /// What the relay does each way.
    pub(crate) impairment: Impairment,
    /// The file moved each way (`16m` or `32m` of [`Files`]) and its size.
    pub(crate) file: &'static str,
    pub(crate) bytes: u64,
    /// Targets of ours / reference: download, upload.
    pub(crate) targets: (f64, f64),
}

/// The three profiles of issue 12 with its targets.
pub(crate) fn profiles() -> Vec<Profile> {
    let base = Impairment {
        queue_limit: 65_536,
        ..Impairment::default()
    };
    vec![
        Profile {
            name: "a",
            describe: "1 % loss, 10 ms each way",
            impairment: Impairment {
                loss: 0.01,
                delay: Duration::from_millis(10),
                ..base.clone()
            },
            file: "16m",
            bytes: 16 << 20,
            targets: (0.9, 0.9),
        },
        Profile {
            name: "b",
            describe: "3 % loss, 10 ± 5 ms each way, 5 % sent undelayed",
            impairment: Impairment {
                loss: 0.03,
                delay: Duration::from_millis(10),
                jitter: Duration::from_millis(5),
                // A jittery queue (FIFO); reordering comes from the undelayed 5 % (netem's
                // `reorder`), which overtake up to 15 ms of traffic.
                keep_order: true,
                undelayed: 0.05,
                ..base.clone()
            },
            file: "16m",
            bytes: 16 << 20,
            targets: (0.7, 0.9),
        },
        Profile {
            name: "c",
            describe: "0 % loss, 50 ms each way",
            impairment: Impairment {
                delay: Duration::from_millis(50),
                ..base
            },
            file: "32m",
            bytes: 32 << 20,
            targets: (0.9, 0.9),
        },
    ]
}

/// The profiles' names, in the order they run.
pub(crate) fn names() -> Vec<&'static str> {
    profiles().iter().map(|p| p.name).collect()
}

/// Runs the profiles named in `only` (every one when it is empty) on the two relayed sides
/// and adds rows and notes to `report`.
pub(crate) fn run(
    sides: &[&Side; 2],
    files: &Files,
    limit: Duration,
    only: &[String],
    report: &mut Report,
) {
    let chosen = |p: &Profile| only.is_empty() || only.iter().any(|n| n == p.name);
    for profile in profiles().into_iter().filter(chosen) {
        let started = Instant::now();
        for side in sides {
            if let Some(relay) = &side.relay {
                relay.set_impairment(profile.impairment.clone());
            }
        }
        let before: Vec<RelayStats> = sides.iter().map(|s| relay_stats(s)).collect();
        let mib = profile.bytes >> 20;
        let path = files.www.join(profile.file).to_string_lossy().into_owned();
        let mut down = Row::new(
            format!(
                "lossy {}: download {mib} MiB ({})",
                profile.name, profile.describe
            ),
            "MB/s",
        )
        .target(Target::RatioAtLeast(profile.targets.0));
        let mut up = Row::new(
            format!(
                "lossy {}: upload {mib} MiB ({})",
                profile.name, profile.describe
            ),
            "MB/s",
        )
        .target(Target::RatioAtLeast(profile.targets.1));
        for (row, upload) in [(&mut down, None), (&mut up, Some(path.as_str()))] {
            let what = if upload.is_some() {
                "upload"
            } else {
                "download"
            };
            for (i, side) in sides.iter().enumerate() {
                let url = if upload.is_some() {
                    Side::url("upload")
                } else {
                    Side::url(profile.file)
                };
                eprintln!(
                    "bench: lossy {}: {} {what} {mib} MiB",
                    profile.name,
                    side.kind.label()
                );
                let result =
                    measure::bounded_transfer(&side.gw_ns, &url, upload, profile.bytes, limit);
                match result {
                    Ok(transfer) => {
                        row.set(i, transfer.mb_per_s());
                        if !transfer.complete {
                            report.notes.push(timeout_note(
                                &profile,
                                side,
                                what,
                                &transfer,
                                profile.bytes,
                            ));
                        }
                    }
                    Err(error) => report.notes.push(format!(
                        "lossy {}: {}: {what} failed: {error:#}",
                        profile.name,
                        side.kind.label()
                    )),
                }
            }
        }
        report.rows.extend([down, up]);
        for (i, side) in sides.iter().enumerate() {
            let after = relay_stats(side);
            let (to_gw, to_agent) = (
                after.to_gateway.dropped - before[i].to_gateway.dropped,
                after.to_agent.dropped - before[i].to_agent.dropped,
            );
            let full = (after.to_gateway.queue_full + after.to_agent.queue_full)
                - (before[i].to_gateway.queue_full + before[i].to_agent.queue_full);
            let sent = (after.to_gateway.sent + after.to_agent.sent)
                - (before[i].to_gateway.sent + before[i].to_agent.sent);
            report.notes.push(format!(
                "lossy {}: {} relay: {sent} datagrams sent, dropped {to_gw} towards the \
                 gateway and {to_agent} towards the agent side, {full} for a full queue",
                profile.name,
                side.kind.label()
            ));
        }
        eprintln!(
            "bench: lossy {} done in {:.0} s",
            profile.name,
            started.elapsed().as_secs_f64()
        );
    }
}

fn relay_stats(side: &Side) -> RelayStats {
    side.relay
        .as_ref()
        .map(testbed::ImpairedRelay::stats)
        .unwrap_or_default()
}

fn timeout_note(
    profile: &Profile,
    side: &Side,
    what: &str,
    transfer: &Transfer,
    expected: u64,
) -> String {
    format!(
        "lossy {}: {} {what} TIMED OUT after {:.0} s with {:.1} of {} MiB through: its figure \
         is the rate until then",
        profile.name,
        side.kind.label(),
        transfer.secs,
        transfer.bytes as f64 / f64::from(1u32 << 20),
        expected >> 20
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_follow_the_issue() {
        let profiles = profiles();
        assert_eq!(profiles.len(), 3);
        let [a, b, c] = [&profiles[0], &profiles[1], &profiles[2]];
        assert_eq!(
            (a.impairment.loss, a.impairment.delay.as_millis()),
            (0.01, 10)
        );
        assert_eq!((a.bytes, a.targets), (16 << 20, (0.9, 0.9)));
        assert_eq!(
            (b.impairment.loss, b.impairment.jitter.as_millis()),
            (0.03, 5)
        );
        assert_eq!((b.impairment.undelayed, b.targets), (0.05, (0.7, 0.9)));
        assert_eq!(
            (c.impairment.loss, c.impairment.delay.as_millis()),
            (0.0, 50)
        );
        assert_eq!((c.bytes, c.targets), (32 << 20, (0.9, 0.9)));
    }
}
