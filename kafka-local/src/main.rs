//! kafka-local: the binary behind `scripts/kafka` (see `scripts/kafka --help`, the text of
//! [`kafka_local::cli::usage`]). Progress and errors go to stderr as `kafka: …`; usage errors
//! exit 2, failures 1, `status` 0/1/3.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use kafka_local::cli::{self, Cmd, Opts};
use kafka_local::cluster::{self, StartOptions, Target};
use kafka_local::{admin, Env, Error, Reporter};

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&argv) {
        Ok(code) => code,
        Err(e) => report(&e),
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Prints an error the way the bash script did; its exit code.
fn report(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<Error>() {
        Some(Error::Usage(m)) => usage_error(m),
        Some(Error::NotReady { message, details }) => {
            eprintln!("{details}");
            eprintln!("kafka: error: {message}");
            1
        }
        Some(Error::Interrupted(sig)) => {
            if *sig == libc::SIGINT {
                130
            } else {
                143
            }
        }
        _ => {
            eprintln!("kafka: error: {e:#}");
            1
        }
    }
}

fn usage_error(m: &str) -> i32 {
    eprintln!("kafka: {m}");
    eprintln!("Run 'scripts/kafka --help' for the commands and options.");
    2
}

fn usage_text(env: &Env) -> String {
    cli::usage(&env.cache.dir.display().to_string())
}

fn no_args(cmd: Cmd, o: &Opts) -> Result<(), Error> {
    if o.args.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(match cmd {
        Cmd::Fetch => "fetch takes no arguments".to_owned(),
        _ => format!(
            "{} takes no arguments (got '{}')",
            cmd.name(),
            o.args.join(" ")
        ),
    }))
}

fn target(o: &Opts) -> Target {
    Target {
        port: o.port,
        dir: o.dir.clone(),
    }
}

fn out(line: &str) -> anyhow::Result<()> {
    let mut so = std::io::stdout().lock();
    writeln!(so, "{line}").context("writing to stdout")
}

fn run(argv: &[String]) -> anyhow::Result<i32> {
    let env = Env::new(Reporter::stderr());
    let Some(first) = argv.first() else {
        eprint!("{}", usage_text(&env));
        return Ok(2);
    };
    let Some(cmd) = Cmd::parse(first) else {
        return Ok(usage_error(&format!("unknown command '{first}'")));
    };
    if cmd == Cmd::Help {
        out(usage_text(&env).trim_end())?;
        return Ok(0);
    }
    let o = cli::parse_opts(&argv[1..])?;
    if o.help {
        out(usage_text(&env).trim_end())?;
        return Ok(0);
    }
    kafka_local::process::install_interrupt_handlers();
    let node = || {
        o.node
            .clone()
            .ok_or_else(|| Error::Usage(format!("{} needs --node I", cmd.name())))
    };
    match cmd {
        Cmd::Start => {
            no_args(cmd, &o)?;
            if o.node.is_some() || o.bootstrap.is_some() || o.keep_data {
                return Err(Error::Usage(
                    "start takes no --node, --bootstrap or --keep-data".into(),
                )
                .into());
            }
            let owner = match &o.owner {
                Some(p) => Some(
                    p.parse::<u32>()
                        .map_err(|_| Error::Usage(format!("--owner must be a pid, got '{p}'")))?,
                ),
                None => None,
            };
            let started = cluster::start(
                &env,
                &StartOptions {
                    target: target(&o),
                    nodes: o.nodes,
                    owner,
                    log_level: o.log_level,
                    heap: o.heap.clone(),
                    sets: o.sets.clone(),
                    timeout: o.timeout,
                    security: o.security(),
                },
            )?;
            if let Some(s) = &started.sasl {
                out(&format!("SASL_PLAINTEXT {}", s.line()))?;
            }
            if let Some(s) = &started.tls {
                out(&format!("SSL {}", s.line()))?;
            }
            out(&started.bootstrap)?;
            Ok(0)
        }
        Cmd::Stop => {
            no_args(cmd, &o)?;
            let t = o.timeout.unwrap_or(Duration::from_secs(30));
            cluster::stop(&env, &target(&o), o.keep_data, t)?;
            Ok(0)
        }
        Cmd::Status => {
            no_args(cmd, &o)?;
            let s = cluster::status(&env, &target(&o))?;
            for l in &s.lines {
                out(l)?;
            }
            Ok(s.code)
        }
        Cmd::StopNode => {
            no_args(cmd, &o)?;
            let t = o.timeout.unwrap_or(Duration::from_secs(30));
            cluster::stop_node(&env, &target(&o), &node()?, t)?;
            Ok(0)
        }
        Cmd::KillNode => {
            no_args(cmd, &o)?;
            cluster::kill_node(&env, &target(&o), &node()?)?;
            Ok(0)
        }
        Cmd::StartNode => {
            no_args(cmd, &o)?;
            let t = o.timeout.unwrap_or(Duration::from_secs(120));
            cluster::start_node(&env, &target(&o), &node()?, o.log_level, o.heap.clone(), t)?;
            Ok(0)
        }
        Cmd::PauseNode => {
            no_args(cmd, &o)?;
            cluster::pause_node(&env, &target(&o), &node()?)?;
            Ok(0)
        }
        Cmd::ResumeNode => {
            no_args(cmd, &o)?;
            cluster::resume_node(&env, &target(&o), &node()?)?;
            Ok(0)
        }
        Cmd::CreateTopic => {
            let t = cli::parse_topic_args(&o.args)?;
            let b = bootstrap(&env, &o)?;
            let timeout = o.timeout.unwrap_or(Duration::from_secs(60));
            let r = admin::create_topic(
                &b,
                &t.name,
                t.partitions,
                t.replication,
                &t.configs,
                timeout,
            )?;
            out(&r.line(&t.name))?;
            Ok(0)
        }
        Cmd::Describe => {
            let b = bootstrap(&env, &o)?;
            let timeout = o.timeout.unwrap_or(Duration::from_secs(30));
            let d = admin::describe(&b, &o.args, timeout)?;
            out(d.render().trim_end())?;
            match d.topic_error {
                Some(e) => Err(Error::Failed(e).into()),
                None => Ok(0),
            }
        }
        Cmd::Fetch => {
            no_args(cmd, &o)?;
            let java = kafka_local::cache::Java::find()?;
            env.cache.ensure(&java, &env.reporter)?;
            let n = env.cache.verify()?;
            let _ = cluster::ensure_cds(&env, &java);
            env.reporter.say(&format!(
                "Kafka {} jars verified ({n} jars, sha256) in {}",
                kafka_local::KAFKA_VERSION,
                env.cache.lib.display()
            ));
            out(&env.cache.lib.display().to_string())?;
            Ok(0)
        }
        Cmd::CheckCompose => {
            let line = kafka_local::compose::check_compose(&env)?;
            env.reporter.say(&line);
            Ok(0)
        }
        Cmd::Help => Ok(0),
    }
}

fn bootstrap(env: &Env, o: &Opts) -> Result<String, Error> {
    match &o.bootstrap {
        Some(b) => Ok(b.clone()),
        None => cluster::cluster_bootstrap(env, &target(o)),
    }
}
