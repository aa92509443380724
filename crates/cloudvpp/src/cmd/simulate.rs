//! `cloudvpp simulate ...`: simulated devices against a running MDM service.

use anyhow::{Context, Result};
use clap::Subcommand;
use cloudvpp_simulator::{Fleet, Pki, SimPlatform};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

#[derive(Subcommand)]
pub enum SimulateCommand {
    /// Make a throwaway CA and device key in a new state file; write the CA for `mdm serve --ca`.
    Pki {
        /// State file to create.
        #[arg(long)]
        state: PathBuf,
        /// Where to write the CA certificate.
        #[arg(long)]
        ca_out: PathBuf,
    },
    /// Mint N devices with their own identity certificates and enroll them.
    Enroll {
        /// State file (from `simulate pki`).
        #[arg(long)]
        state: PathBuf,
        /// MDM service base URL.
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        server: String,
        /// How many devices.
        #[arg(long, default_value_t = 1)]
        devices: usize,
        /// ios, macos, shared-ipad or user-enrollment.
        #[arg(long, default_value = "ios")]
        platform: SimPlatform,
        /// Devices enrolling at once (a fleet does not enroll in one instant).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Every device polls each channel once and answers its commands.
    Poll {
        /// State file.
        #[arg(long)]
        state: PathBuf,
        /// MDM service base URL.
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        server: String,
        /// Answer the first N InviteToProgram deliveries of each device with NotNow.
        #[arg(long, default_value_t = 0)]
        not_now: u32,
        /// InvitationResult to answer (Acknowledged, InvalidProgramID, InvalidInvitationURL).
        #[arg(long, default_value = "Acknowledged")]
        invitation_result: String,
        /// Then each device's person opens the invitation link and accepts it.
        #[arg(long)]
        accept: bool,
    },
    /// Idle check-ins from every device, signed, over N connections for a bounded time.
    Load {
        /// State file.
        #[arg(long)]
        state: PathBuf,
        /// MDM service base URL (loopback).
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        server: String,
        /// Concurrent connections.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds to run (at most 600).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
        seconds: u64,
    },
    /// Write pre-signed Idle reports (body + Mdm-Signature) per device, for load tools.
    Bodies {
        /// State file.
        #[arg(long)]
        state: PathBuf,
        /// Output directory: N.plist and N.sig per device.
        #[arg(long)]
        out: PathBuf,
    },
}

pub async fn run(cmd: SimulateCommand) -> Result<()> {
    match cmd {
        SimulateCommand::Pki { state, ca_out } => {
            let pki = tokio::task::spawn_blocking(Pki::generate).await??;
            cloudvpp_simulator::write_private(&ca_out, pki.ca_cert_pem.as_bytes())
                .with_context(|| format!("writing {}", ca_out.display()))?;
            Fleet {
                pki,
                devices: Vec::new(),
            }
            .save(&state)?;
            eprintln!(
                "CA written to {}; state in {}",
                ca_out.display(),
                state.display()
            );
        }
        SimulateCommand::Enroll {
            state,
            server,
            devices,
            platform,
            concurrency,
        } => {
            let mut fleet = Fleet::load(&state)?;
            let pki = fleet.pki.clone();
            let specs = tokio::task::spawn_blocking(move || {
                (0..devices)
                    .map(|_| pki.new_device(platform))
                    .collect::<Result<Vec<_>>>()
            })
            .await??;
            let start = fleet.devices.len();
            fleet.devices.extend(specs);
            let live = fleet.devices(&server)?;
            let mut set = tokio::task::JoinSet::new();
            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
            for d in live.into_iter().skip(start) {
                let slots = slots.clone();
                set.spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    let r = d.enroll().await;
                    (d.spec.enrollment_ids(), r)
                });
            }
            let mut failed = 0;
            while let Some(joined) = set.join_next().await {
                let (ids, r) = joined?;
                match r {
                    Ok(()) => println!("{}", ids.join(" ")),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{}: {e:#}", ids[0]);
                    }
                }
            }
            fleet.save(&state)?;
            if failed > 0 {
                anyhow::bail!("{failed} of {devices} devices failed to enroll");
            }
        }
        SimulateCommand::Poll {
            state,
            server,
            not_now,
            invitation_result,
            accept,
        } => {
            let fleet = Fleet::load(&state)?;
            let mut set = tokio::task::JoinSet::new();
            for d in fleet.devices(&server)? {
                let result = invitation_result.clone();
                set.spawn(async move {
                    let mut d = d;
                    d.behaviour.not_now.store(not_now, Ordering::SeqCst);
                    d.behaviour.invitation_result = result;
                    let mut all = d.poll(false).await?;
                    if d.spec.user.is_some() {
                        all.extend(d.poll(true).await?);
                    }
                    if accept {
                        for h in all.iter().filter(|h| h.status == "Acknowledged") {
                            if let Some(url) = &h.invitation_url {
                                let person = format!("{}@people.example", d.spec.id.to_lowercase());
                                cloudvpp_simulator::accept_invitation(
                                    &reqwest::Client::new(),
                                    url,
                                    &person,
                                )
                                .await?;
                            }
                        }
                    }
                    anyhow::Ok(all)
                });
            }
            while let Some(joined) = set.join_next().await {
                for h in joined?? {
                    println!(
                        "{} {} {} {}{}",
                        h.channel,
                        h.request_type,
                        h.command_uuid,
                        h.status,
                        h.invitation_url
                            .map(|u| format!(" {u}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        SimulateCommand::Load {
            state,
            server,
            connections,
            seconds,
        } => {
            let host = reqwest::Url::parse(&server)?
                .host_str()
                .unwrap_or("")
                .to_string();
            anyhow::ensure!(
                host == "127.0.0.1" || host == "localhost" || host == "[::1]",
                "load only targets loopback"
            );
            let fleet = Fleet::load(&state)?;
            anyhow::ensure!(
                !fleet.devices.is_empty(),
                "no devices: run `simulate enroll` first"
            );
            // Sign once per device up front: the load measures the server, not our signer.
            let mut signed = Vec::new();
            for d in fleet.devices(&server)? {
                let body = d.report_body(false, "Idle", None, &[]);
                signed.push((d.sign(&body)?, body));
            }
            let signed = std::sync::Arc::new(signed);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
            let mut set = tokio::task::JoinSet::new();
            for c in 0..connections {
                let (signed, url) = (
                    signed.clone(),
                    format!("{}/mdm", server.trim_end_matches('/')),
                );
                set.spawn(async move {
                    let http = reqwest::Client::builder()
                        .pool_max_idle_per_host(1)
                        .build()?;
                    let (mut ok, mut failed, mut i) = (0u64, 0u64, c);
                    let mut latencies = Vec::new();
                    while std::time::Instant::now() < deadline {
                        let (sig, body) = &signed[i % signed.len()];
                        i += 1;
                        let t = std::time::Instant::now();
                        let r = http
                            .put(&url)
                            .header("Content-Type", cloudvpp_mdmwire::MDM_CONTENT_TYPE)
                            .header("Mdm-Signature", sig)
                            .body(body.clone())
                            .send()
                            .await;
                        match r {
                            Ok(resp) if resp.status().is_success() => {
                                let _ = resp.bytes().await;
                                ok += 1;
                                latencies.push(t.elapsed());
                            }
                            _ => failed += 1,
                        }
                    }
                    anyhow::Ok((ok, failed, latencies))
                });
            }
            let (mut ok, mut failed, mut lat) = (0, 0, Vec::new());
            while let Some(j) = set.join_next().await {
                let (o, f, l) = j??;
                ok += o;
                failed += f;
                lat.extend(l);
            }
            lat.sort();
            let pct = |p: usize| {
                lat.get(lat.len() * p / 100)
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .unwrap_or(0.0)
            };
            println!(
                "{ok} check-ins in {seconds}s: {:.0}/s, {failed} failed, latency p50 {:.2} ms p99 {:.2} ms",
                ok as f64 / seconds as f64,
                pct(50),
                pct(99)
            );
        }
        SimulateCommand::Bodies { state, out } => {
            let fleet = Fleet::load(&state)?;
            std::fs::create_dir_all(&out)?;
            for (i, d) in fleet.devices("http://unused")?.iter().enumerate() {
                let body = d.report_body(false, "Idle", None, &[]);
                let sig = d.sign(&body)?;
                std::fs::write(out.join(format!("{i}.plist")), &body)?;
                std::fs::write(out.join(format!("{i}.sig")), sig)?;
            }
            eprintln!(
                "{} devices written to {}",
                fleet.devices.len(),
                out.display()
            );
        }
    }
    Ok(())
}
