//! `shear experiment`: run the arms of a plan stage by stage (each stage one `shear` command line,
//! skipped when its output exists), then write `summary.json` from the logs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use tracing::info;

use shear::experiment::{summary, ArmPlan, ArmRecord, Plan, Stage, ARM_RECORD, REFERENCE_EVAL, REFERENCE_LOSSES};

#[derive(Args)]
pub struct ExperimentArgs {
    /// The plan (TOML): the source, target, corpus, the shared training settings and the `[[arm]]`s.
    #[arg(long)]
    pub plan: PathBuf,
    /// Only these arms, comma-separated (default: all). Drivers with disjoint arms can run side by side.
    #[arg(long, value_delimiter = ',')]
    pub arms: Vec<String>,
    /// Print the command lines still to run, and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only rewrite `summary.json` from the committed logs, and print it as Markdown tables.
    #[arg(long)]
    pub summary_only: bool,
    /// Testing aid: passed to `shear train` (lets a test kill an arm mid-run).
    #[arg(long, hide = true, default_value_t = 0)]
    pub step_delay_ms: u64,
}

pub fn experiment_cmd(a: ExperimentArgs) -> Result<()> {
    let plan = Plan::load(&a.plan)?;
    let arms = plan.select(&a.arms)?;
    let seq_len = shear::data::corpus::Corpus::open(&plan.corpus)?.seq_len();
    if !a.summary_only {
        let reference = plan.reference_stage();
        if !a.dry_run {
            std::fs::create_dir_all(&plan.out).with_context(|| format!("creating {}", plan.out.display()))?;
        }
        run_stage(&reference, &plan.out.join("reference.log"), a.dry_run)?;
        if !a.dry_run {
            write_reference_losses(&plan)?;
        }
        for arm in &arms {
            run_arm(&plan, arm, a.dry_run, a.step_delay_ms).with_context(|| format!("arm {}", arm.name))?;
        }
    }
    if a.dry_run {
        return Ok(());
    }
    let s = summary::summarize(&plan, seq_len)?;
    summary::write(&plan, &s)?;
    for (name, arm) in &s.arms {
        info!(
            "{name}: {} tokens, mean eval loss {:.3} (held-out {:.3}), excess range {:.3}, tasks {}",
            arm.tokens,
            arm.mean_eval_loss,
            arm.mean_heldout_loss,
            arm.excess_range,
            arm.tasks_mean.map_or("-".into(), |x| format!("{x:.4}"))
        );
    }
    if !s.pending.is_empty() {
        info!("pending: {}", s.pending.join(", "));
    }
    info!("wrote {}", plan.out.join(shear::experiment::SUMMARY).display());
    if a.summary_only {
        print!("{}", summary::markdown(&s));
    }
    Ok(())
}

fn write_reference_losses(plan: &Plan) -> Result<()> {
    let path = plan.out.join(REFERENCE_LOSSES);
    if path.exists() {
        return Ok(());
    }
    let losses = summary::domain_losses(&plan.out.join(REFERENCE_EVAL))?;
    std::fs::write(&path, serde_json::to_string_pretty(&losses)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

fn run_arm(plan: &Plan, arm: &ArmPlan, dry_run: bool, step_delay_ms: u64) -> Result<()> {
    let (out, work) = (plan.arm_out(arm), plan.arm_work(arm));
    if out.join(ARM_RECORD).exists() {
        info!("{}: done ({} exists)", arm.name, out.join(ARM_RECORD).display());
        return Ok(());
    }
    if !dry_run {
        for dir in [&out, &work] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let stages = plan.arm_stages(arm);
    let (before_train, after_train) = stages.split_at(2);
    for s in before_train.iter() {
        run_stage(s, &work.join(format!("{}.log", s.name)), dry_run)?;
    }
    if dry_run && !work.join("start").exists() {
        info!("{}: then train, export, evaluate (the rest depends on the start model)", arm.name);
        return Ok(());
    }
    match plan.train_stage(arm)? {
        Some(mut s) => {
            if step_delay_ms > 0 {
                s.args.0.extend(["--step-delay-ms".into(), step_delay_ms.to_string().into()]);
            }
            run_stage(&s, &work.join("train.log"), dry_run)?
        }
        None => info!("{}: training complete", arm.name),
    }
    if dry_run {
        return Ok(());
    }
    for s in after_train.iter() {
        run_stage(s, &work.join(format!("{}.log", s.name)), false)?;
    }
    // The logs last: `arm.json` marks the arm complete.
    let run = work.join("train");
    for f in [shear::run::RUN_FILE, shear::run::METRICS, shear::run::EVALS] {
        std::fs::copy(run.join(f), out.join(f)).with_context(|| format!("copying {}", run.join(f).display()))?;
    }
    let record = ArmRecord::new(plan, arm)?;
    std::fs::write(out.join(ARM_RECORD), serde_json::to_string_pretty(&record)? + "\n")
        .with_context(|| format!("writing {}", out.join(ARM_RECORD).display()))?;
    info!("{}: complete", arm.name);
    Ok(())
}

/// Run one stage as a child `shear` (the same binary), its log in `log`, its standard output (if the
/// stage keeps it) written to the stage's file only when it succeeds.
fn run_stage(stage: &Stage, log: &Path, dry_run: bool) -> Result<()> {
    if stage.is_done() {
        return Ok(());
    }
    info!("{}   (log: {})", stage.args.display(), log.display());
    if dry_run {
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the shear binary")?;
    let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let tmp = stage.stdout.as_ref().map(|p| p.with_extension(format!("json.tmp-{}", std::process::id())));
    let stdout = match &tmp {
        Some(t) => Stdio::from(std::fs::File::create(t).with_context(|| format!("creating {}", t.display()))?),
        None => Stdio::from(log_file.try_clone()?),
    };
    let started = Instant::now();
    let status = Command::new(exe).args(&stage.args.0).stdout(stdout).stderr(log_file).status()?;
    if !status.success() {
        if let Some(t) = &tmp {
            let _ = std::fs::remove_file(t);
        }
        if status.code() == Some(130) {
            bail!("stage {} interrupted (its checkpoint is kept): run the same command again to resume", stage.name);
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)");
        bail!("stage {} failed ({status}; log {}): {last}", stage.name, log.display());
    }
    if let (Some(t), Some(p)) = (&tmp, &stage.stdout) {
        std::fs::rename(t, p).with_context(|| format!("writing {}", p.display()))?;
    }
    info!("{} done in {:.0} s", stage.name, started.elapsed().as_secs_f64());
    Ok(())
}
