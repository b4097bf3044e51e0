//! `sluice`: the broker binary. The Kafka listener lands with issue 3; until then `serve` checks
//! the data directory with the storage engine and says plainly that no broker is listening.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: sluice serve [--data-dir DIR]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("serve") {
        return usage();
    }
    let mut data_dir = PathBuf::from("./data");
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        match (a.as_str(), rest.next()) {
            ("--data-dir", Some(d)) => data_dir = PathBuf::from(d),
            _ => return usage(),
        }
    }
    let probe_dir = data_dir.join("__storage_check");
    let result = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let log = sluice_io::Log::open(&probe_dir, sluice_io::LogConfig::default()).await?;
            log.close().await
        })
        .map_err(|e| e.to_string())
        .and_then(|h| h.join().map_err(|e| e.to_string()));
    match result {
        Ok(Ok(())) => {
            eprintln!(
                "sluice: storage engine ready in {} (O_DIRECT segment log).\n\
                 sluice: the Kafka protocol listener is not built yet (issue 3): no broker is listening.",
                data_dir.display()
            );
            ExitCode::from(1)
        }
        Ok(Err(e)) => {
            eprintln!("sluice: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("sluice: could not start an executor: {e}");
            ExitCode::from(1)
        }
    }
}
