use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use clap::Parser as _;
use profiler::{
    cli::{AgentArgs, AttachArgs, BaselineCommand, Cli, Command, CompareArgs, UnwindTablesArgs},
    session::{AttachError, Session},
    unwind,
};

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|err| {
        // clap exits 2 on a usage error, which for the checklist means a regression: a release
        // pipeline must not read a mistyped option as one.
        let subcommand = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        if err.use_stderr() && subcommand.as_deref() == Some("checklist") {
            let _ = err.print();
            std::process::exit(1);
        }
        err.exit()
    });
    let level = if cli.verbose { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    let result = match cli.command {
        Command::Attach(args) => attach(args, cli.verbose),
        Command::Agent(args) => agent(args, cli.verbose),
        Command::Load(args) => profiler::load::run(args),
        Command::UnwindTables(args) => unwind_tables(&args),
        Command::Compare(args) => compare(args),
        Command::Baseline(command) => baseline(command),
        Command::Checklist(args) => checklist(args, cli.verbose),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if cli.verbose
                && let Some(log) = err.downcast_ref::<AttachError>().and_then(|e| match e {
                    AttachError::Probe(p) => p.verifier_log(),
                    _ => None,
                })
            {
                eprintln!("verifier log:\n{log}");
            }
            ExitCode::FAILURE
        }
    }
}

fn agent(args: AgentArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    let opts = args.into_options(verbose).map_err(anyhow::Error::msg)?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_interrupts(
        stop.clone(),
        "stopping: detaching (interrupt again to exit at once)",
    )?;
    let agent = profiler::agent::Agent::start(opts)?;
    // Tests and scripts wait for this line: the endpoint is up.
    println!("agent listening on http://{}", agent.local_addr());
    agent.run(&stop)?;
    Ok(ExitCode::SUCCESS)
}

fn attach(args: AttachArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    watch_interrupts(
        stop.clone(),
        "stopping: writing the outputs (interrupt again to exit without them)",
    )?;
    let opts = args.into_options(verbose);
    let mut session = Session::start(opts.clone())?;
    let target = session.target();
    let until = match opts.duration {
        Some(d) => format!("for {}", humantime::format_duration(d)),
        None => "until Ctrl-C".to_string(),
    };
    eprintln!(
        "profiling pid {} ({}) {until}; writing to {}",
        target.pid,
        target.comm,
        session.out_dir().display()
    );
    let end = session.run(&stop);
    let outcome = session.finish(end)?;
    println!("{}", outcome.terminal);
    println!("\nreports in {}", outcome.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The first Ctrl-C or SIGTERM ends the capture, which still writes every output; a second
/// one exits at once, without them, and says so (the kernel detaches our programs as we exit).
fn watch_interrupts(stop: Arc<AtomicBool>, saying: &'static str) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if stop.swap(true, Ordering::SeqCst) {
                    eprintln!("\nsecond interrupt: exiting now, without writing the outputs");
                    std::process::exit(128 + signal);
                }
                eprintln!("\n{saying}");
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn checklist(args: profiler::checklist::ChecklistArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    let opts = args.into_options(verbose)?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_checklist_interrupts(stop.clone())?;
    let verdict = profiler::checklist::run(&opts, &stop)?;
    print!("{}", verdict.text);
    Ok(ExitCode::from(verdict.exit_code()))
}

/// Ctrl-C, SIGTERM or SIGHUP ends the checklist: the step running stops its load, its capture
/// and the server it started (in a process group of its own, which a terminal's Ctrl-C does not
/// reach). Exiting at once would leave that server running, so a second signal only says so.
fn watch_checklist_interrupts(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if stop.swap(true, Ordering::SeqCst) {
                    eprintln!("\nstill stopping: the server started for this step goes first");
                } else {
                    eprintln!("\nstopping: the load, the capture and the server it started");
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn unwind_tables(args: &UnwindTablesArgs) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for file in &args.files {
        reports.push(unwind::inspect(file).with_context(|| format!("{}", file.display()))?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>10} {:>9} {:>9} {:>11} {:>9}  file",
        "functions", "rows", "unsupp.", "table KiB", "ms"
    );
    for r in &reports {
        println!(
            "{:>10} {:>9} {:>9} {:>11.1} {:>9.1}  {}",
            r.functions,
            r.rows,
            r.unsupported_rows,
            r.table_bytes as f64 / 1024.0,
            r.build_ms,
            r.path
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit status of a comparison that found a regression (1 is any other failure).
const REGRESSION: u8 = 2;

fn verdict(comparison: &profiler::compare::Comparison, out: &std::path::Path) -> ExitCode {
    print!("{}", profiler::compare::render(comparison));
    println!("\nreports in {}", out.display());
    if comparison.verdict == "pass" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(REGRESSION)
    }
}

fn compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let gates = match &args.gates {
        Some(path) => profiler::compare::read_gates(path)?,
        None => profiler::compare::Gates::default(),
    };
    let out = args.output.unwrap_or_else(|| args.new.join("compare"));
    let comparison = profiler::compare::compare(&args.old, &args.new, &out, &gates)?;
    Ok(verdict(&comparison, &out))
}

fn baseline(command: BaselineCommand) -> anyhow::Result<ExitCode> {
    match command {
        BaselineCommand::Save {
            name,
            dir,
            force,
            results,
        } => {
            let saved = profiler::compare::save_baseline(&results, &name, &dir, force)?;
            println!(
                "baseline {name} saved in {}; edit its gates.json to change the thresholds",
                saved.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        BaselineCommand::Check {
            name,
            dir,
            output,
            results,
        } => {
            let out = output.unwrap_or_else(|| dir.join(format!("compare-{name}")));
            let comparison = profiler::compare::check_baseline(&results, &name, &dir, &out)?;
            Ok(verdict(&comparison, &out))
        }
    }
}
